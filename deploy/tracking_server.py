"""``deploy/tracking-server start|stop|status|env DIR``: the command line of :mod:`deploy.stack` (kept outside
the package, so that a Python without its dependencies gets one line instead of a traceback)."""

from __future__ import annotations

import logging
import shlex
import sys
import time

try:
    import click

    from deploy.stack.control import Stack, start, status, stop
    from deploy.stack.layout import DEFAULT_USER, PARTS, USERS, StackError
except ImportError as exc:  # the wrong Python: one line, not a traceback
    sys.exit(f"Error: {exc.name} is not installed for {sys.executable}: activate the project's environment, or "
             "pip install -e '.[server]' (or set PYTHON to the interpreter that has it).")

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}
ONLY = click.option("--only", type=click.Choice(PARTS), multiple=True,
                    help="Only this part (repeatable); e.g. --only mlflow to stop and start the MLflow server alone.")
USER = click.option("--user", type=click.Choice(USERS), default=DEFAULT_USER, show_default=True,
                    help="Whose credentials to print.")
DIRECTORY = click.argument("directory", type=click.Path(file_okay=False))


@click.group(context_settings=CONTEXT)
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="INFO", show_default=True)
def main(log_level: str) -> None:
    """A team's MLflow tracking server (PostgreSQL, an S3 object store, MLflow with basic auth) on local
    ports, every file under DIRECTORY. See README.md, "A team's tracking server"."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr,
                        force=True)


@main.command("start", context_settings=CONTEXT)
@DIRECTORY
@ONLY
@click.option("--postgres-port", type=click.IntRange(1, 65535), help="Default: the recorded one, else a free one.")
@click.option("--s3-port", type=click.IntRange(1, 65535), help="Default: the recorded one, else a free one.")
@click.option("--mlflow-port", type=click.IntRange(1, 65535), help="Default: the recorded one, else a free one.")
@click.option("--workers", type=click.IntRange(1, 64), help="MLflow server workers (default: CPUs, at most 4).")
@click.option("--job-execution/--no-job-execution", default=None,
              help="MLFLOW_SERVER_ENABLE_JOB_EXECUTION (default: off; the training workflow uses no server jobs).")
@click.option("--pg-bin", type=click.Path(file_okay=False), help="Folder with initdb and pg_ctl "
              "(default: $CONVLSTM_PG_BIN, /usr/lib/postgresql/15/bin, the newest /usr/lib/postgresql/*/bin, PATH).")
@USER
def start_command(directory: str, only: tuple[str, ...], postgres_port: int | None, s3_port: int | None,
                  mlflow_port: int | None, workers: int | None, job_execution: bool | None, pg_bin: str | None,
                  user: str) -> None:
    """Start the stack in DIRECTORY (created on first use; the same data, ports and passwords afterwards),
    wait until every part answers, and print the exports for MLflow clients."""
    began = time.monotonic()
    stack = start(directory, only=only or None, workers=workers, job_execution=job_execution, pg_bin=pg_bin,
                  ports={"postgres": postgres_port, "s3": s3_port, "mlflow": mlflow_port})
    others = [name for name in stack.users if name != user]
    click.echo(f"# The MLflow tracking server runs at {stack.tracking_uri} (ready in {time.monotonic() - began:.0f} s). "
               f"As {user}:")
    _echo_exports(stack, user)
    click.echo("# " + "; ".join(f"{name}: . {stack.layout.credentials_file(name)}" for name in others)
               + " (mode 0600).")


def _echo_exports(stack: Stack, user: str) -> None:
    for name, value in stack.env(user).items():
        click.echo(f"export {name}={shlex.quote(value)}")


@main.command("stop", context_settings=CONTEXT)
@DIRECTORY
@ONLY
def stop_command(directory: str, only: tuple[str, ...]) -> None:
    """Stop the stack in DIRECTORY (SIGTERM, a wait, then SIGKILL), leaving none of its processes behind."""
    stopped = stop(directory, only=only or None)
    click.echo(f"Stopped: {', '.join(stopped)}." if stopped else "Nothing was running.")


@main.command("status", context_settings=CONTEXT)
@DIRECTORY
def status_command(directory: str) -> None:
    """Each part's port and process; exit status 0 when all run, 3 when some do not."""
    parts = status(directory)
    for part in parts:
        where = f"127.0.0.1:{part.port}" if part.port else "-"
        state = f"running (pid {part.process.pid})" if part.process else "stopped"
        click.echo(f"{part.part:<9} {where:<16} {state}")
    if not all(part.running for part in parts):
        sys.exit(3)


@main.command("env", context_settings=CONTEXT)
@DIRECTORY
@USER
def env_command(directory: str, user: str) -> None:
    """Print the exports for MLflow clients: eval "$(deploy/tracking-server env DIR)"."""
    _echo_exports(Stack.open(directory), user)


def run() -> None:
    """Run the command line; a :class:`StackError` is one line on stderr and exit status 1."""
    try:
        main.main(prog_name="deploy/tracking-server", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        sys.exit(130)
    except StackError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    run()
