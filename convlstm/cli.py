"""What every entry point shares: a click command derived from its settings class, logging set-up, and
one error policy (a one-line message naming the flag or file, exit status 2 for usage errors, 1 for
failures and 128 + the signal's number when SIGTERM or SIGINT stopped it, never a traceback, and no
MLflow run left RUNNING).

This module imports neither torch nor mlflow nor xarray, so ``--help`` answers at once.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from click_option_group import optgroup

from convlstm.atomic import WRITE_FAILURES, check_writable
from convlstm.errors import ConvLSTMError, Interrupted
from convlstm.interrupt import catching_signals
from convlstm.settings import UNSET, Field, as_text, build, describe, fields_of, flag_of

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def configure_logging(level: str, log_file: Path | None = None) -> None:
    """Console logging at ``level``; with ``log_file``, the same records are also written there.

    Parameters
    ----------
    level : str
        ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR``.
    log_file : pathlib.Path, optional
        A file that receives the records too. Its folder, the command's ``--output-dir``, is created and
        checked writable here: this is every command's first write, so a read-only folder is refused
        in one line before any work.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        check_writable(log_file.parent, setting="output_dir")
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, handlers=handlers, force=True)
    for noisy in ("matplotlib", "urllib3", "alembic", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _Optional(click.ParamType):
    """A value that may be unset: ``none`` (what ``MLproject`` passes for an unset optional parameter) or ``''``."""

    def __init__(self, inner: click.ParamType) -> None:
        self.inner = inner
        self.name = inner.name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return None if value is None or str(value).lower() in ("", UNSET) else self.inner.convert(value, param, ctx)


class _Numbers(click.ParamType):
    """``"32,64"`` or ``"32 64"`` → ``[32, 64]``; ranges are checked by the settings class."""

    def __init__(self, item: type) -> None:
        self.item = item
        self.name = f"{item.__name__} list"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, list):
            return value
        try:
            return [self.item(token) for token in str(value).replace(",", " ").split()]
        except ValueError:
            self.fail(f"expected numbers such as '32,64' or '32 64', got {value!r}.", param, ctx)


def _click_type(field: Field) -> click.ParamType | tuple[type, type]:
    if field.kind is tuple:
        return (field.item, field.item)  # type: ignore[return-value]
    if field.kind is list:
        numbers = _Numbers(field.item)  # type: ignore[arg-type]
        return _Optional(numbers) if field.optional else numbers
    base = click.Choice(field.spec.choices, case_sensitive=False) if field.spec.choices else {
        bool: click.BOOL, int: click.INT, float: click.FLOAT, str: click.STRING}[field.kind]
    return _Optional(base) if field.optional else base


def _option(field: Field) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    extra: dict[str, Any] = {"is_flag": False, "flag_value": True} if field.kind is bool else {}
    default = as_text(field.default) if field.kind is list else field.default
    spec = field.spec
    bounds = f" ({describe(field)})" if spec.low is not None or spec.high is not None else ""
    return optgroup.option(field.flag, *spec.aliases, field.name, type=_click_type(field), default=default,
                           show_default=field.default not in (None, ""), help=spec.help + bounds, **extra)


class SettingsCommand(click.Command):
    """A command whose list settings also take space-separated values, as in ``--hidden-channels 32 64``.

    Click options take a fixed number of values; the numeric tokens after a list flag are joined into
    one value here (``"32 64"``), which is also how ``mlflow run -P hidden_channels="32 64"`` passes it.

    Attributes
    ----------
    list_flags : frozenset of str
        The flags (aliases included) of list settings, set by :func:`settings_command`.
    """

    list_flags: frozenset[str] = frozenset()

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Join the numbers after each list flag into one value, then let click parse.

        Parameters
        ----------
        ctx : click.Context
            The command's context.
        args : list of str
            The command-line tokens.

        Returns
        -------
        list of str
            What click leaves unparsed.
        """
        merged: list[str] = []
        numbers: list[str] | None = None  # the numbers seen since the last list flag
        for token in args:
            if numbers is not None and token.replace(",", "").replace(".", "").isdigit():
                numbers.append(token)
                continue
            if numbers:
                merged.append(" ".join(numbers))
            numbers = [] if token in self.list_flags else None
            merged.append(token)
        if numbers:
            merged.append(" ".join(numbers))
        return super().parse_args(ctx, merged)


def settings_command(settings_cls: type, epilog: str = "") -> Callable[[Callable[[Any], None]], click.Command]:
    """Make a click command of ``run(settings)``: one option per setting of ``settings_cls``, grouped.

    Parameters
    ----------
    settings_cls : type
        A settings dataclass from ``convlstm.config``.
    epilog : str
        Examples shown at the end of ``--help``.

    Returns
    -------
    callable
        A decorator turning ``run(settings) -> None`` into a click command; the command builds and
        checks the settings from the flags before calling ``run``.
    """
    fields = [f for f in fields_of(settings_cls) if f.spec.cli]

    def decorate(run: Callable[[Any], None]) -> click.Command:
        def callback(**values: Any) -> None:
            run(build(settings_cls, values))

        callback.__doc__ = run.__doc__
        for group in reversed(list(dict.fromkeys(f.spec.group for f in fields))):
            for field in reversed([f for f in fields if f.spec.group == group]):
                callback = _option(field)(callback)
            callback = optgroup.group(group)(callback)
        command = SettingsCommand(run.__name__, callback=callback, params=getattr(callback, "__click_params__", [])[::-1],
                                  help=run.__doc__, epilog=epilog, context_settings=CONTEXT)
        command.list_flags = frozenset(flag for f in fields if f.kind is list for flag in (f.flag, *f.spec.aliases))
        return command

    return decorate


def given_on_command_line(name: str) -> bool:
    """Whether the running command's flag for setting ``name`` was given, rather than left at its default.

    ``mlflow run`` passes every MLproject parameter, so under it (``MLFLOW_RUN_ID`` set) a value equal
    to the default counts as not given.

    Parameters
    ----------
    name : str
        The setting, e.g. ``num_epochs``.

    Returns
    -------
    bool
        True when the user chose the value.
    """
    context = click.get_current_context()
    if context.get_parameter_source(name) is not ParameterSource.COMMANDLINE:
        return False
    default = next(param.default for param in context.command.params if param.name == name)
    return not os.environ.get("MLFLOW_RUN_ID") or context.params[name] != default


def given_args() -> list[str]:
    """The running command's flags that were given on its command line, each with its value as the flag takes
    it (``--hidden-channels 16,32,64``): the same command for another process (a distributed training's).

    Returns
    -------
    list of str
        Flags and values, in the command's order of options.
    """
    context = click.get_current_context()
    args: list[str] = []
    for param in context.command.params:
        if param.name and context.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
            args += [flag_of(param.name), as_text(context.params[param.name])]
    return args


def run_cli(command: click.Command, argv: Sequence[str] | None = None) -> None:
    """Run a click command; turn usage and user errors into one line and an exit status, and fail the
    run ``mlflow run`` created for us when we stop before starting it.

    SIGTERM and SIGINT raise :class:`~convlstm.errors.Interrupted` throughout, so the command's MLflow run
    ends KILLED (not left RUNNING) and the exit status is 128 + the signal's number.

    Parameters
    ----------
    command : click.Command
        The entry point's command.
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).
    """
    try:
        with catching_signals():
            command.main(args=list(argv) if argv is not None else None, standalone_mode=False)
        return
    except click.exceptions.Exit as exc:  # --help and friends
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        message, code, status = exc.format_message(), exc.exit_code, "FAILED"
    except ConvLSTMError as exc:
        setting = getattr(exc, "setting", None)
        flag = f" ({flag_of(setting)})" if setting and flag_of(setting) not in str(exc) else ""
        click.echo(str(exc) if isinstance(exc, Interrupted) else f"Error{flag}: {exc}", err=True)
        message, code, status = str(exc), exc.exit_code, "KILLED" if isinstance(exc, Interrupted) else "FAILED"
    except click.Abort:
        message, code, status = "aborted", 130, "KILLED"
    except OSError as exc:  # a full disk or a folder we may not use, struck outside our own writes
        if exc.errno not in WRITE_FAILURES:
            raise
        message, code, status = f"{exc.strerror}: {exc.filename or 'a file'}", 1, "FAILED"
        click.echo(f"Error: {message}", err=True)
    _record_for_torchrun(message)
    if os.environ.get("RANK", "0") == "0":  # a training process other than rank 0 never touches the MLflow run
        from convlstm.tracking.runs import fail_pending_run

        fail_pending_run(message, status)
    sys.exit(code)


def _record_for_torchrun(message: str) -> None:
    """Under ``torchrun``, leave the one-line reason where its agent reads a failed process's error: the
    ``train`` command's launcher (``--nproc-per-node``) then names each failed process with its reason."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"message": message, "timestamp": int(time.time())}), encoding="utf-8")
    except OSError:
        pass  # the reason is on stderr all the same
