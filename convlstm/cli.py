"""What every entry point shares: boolean flags MLflow can pass, logging set-up, and one error policy
(a clear one-line message and exit code, never a deep traceback, and no run left RUNNING)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from convlstm.errors import DataError, TrainingDiverged

#: ``--flag`` alone means true; ``--flag true|false|1|0|yes|no`` (what ``mlflow run -P`` passes) also works.
BOOL_FLAG = {"type": click.BOOL, "is_flag": False, "flag_value": True, "show_default": True}

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str, log_file: Path | None = None) -> None:
    """Console logging at ``level``; with ``log_file``, the same records are also written there."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, handlers=handlers, force=True)
    for noisy in ("matplotlib", "urllib3", "alembic", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class SpaceSeparatedCommand(click.Command):
    """Lets list options take space-separated values, as in ``--hidden-channels 32 64``.

    Click options take a fixed number of values; the following numeric tokens are joined into one
    value here (``"32 64"``), which is also how ``mlflow run -P hidden_channels="32 64"`` passes it.
    """

    list_options: tuple[str, ...] = ("--hidden-channels",)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        merged: list[str] = []
        i = 0
        while i < len(args):
            token = args[i]
            merged.append(token)
            i += 1
            if token in self.list_options:
                values = []
                while i < len(args) and args[i].replace(",", "").isdigit():
                    values.append(args[i])
                    i += 1
                if values:
                    merged.append(" ".join(values))
        return super().parse_args(ctx, merged)


def parse_int_list(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    """``"32 64"`` or ``"32,64"`` → ``[32, 64]`` (positive integers)."""
    try:
        numbers = [int(token) for token in value.replace(",", " ").split()]
    except ValueError:
        numbers = []
    if not numbers or min(numbers) < 1:
        raise click.BadParameter(f"expected positive integers such as '32 64', got {value!r}.", ctx, param)
    return numbers


def optional_existing_file(ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
    """An existing file, or None for a missing or empty value (``mlflow run`` passes "" for "not given")."""
    if not value:
        return None
    path = Path(value)
    if not path.is_file():
        raise click.BadParameter(f"file {value} does not exist.", ctx, param)
    return path


def optional_text(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """None for a missing or empty value."""
    return value or None


def run_cli(command: click.Command, argv: Sequence[str] | None = None) -> None:
    """Run a click command; turn usage and data errors into a message and exit code, and fail the
    ``mlflow run`` run that was waiting for us."""
    from convlstm.tracking import fail_pending_run

    try:
        command.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except click.exceptions.Exit as exc:  # --help and friends
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        fail_pending_run(exc.format_message())
        sys.exit(exc.exit_code)
    except (DataError, TrainingDiverged) as exc:
        click.echo(f"Error: {exc}", err=True)
        fail_pending_run(str(exc))
        sys.exit(1)
    except click.Abort:
        fail_pending_run("aborted")
        sys.exit(130)
