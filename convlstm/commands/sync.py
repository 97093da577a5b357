"""Send a training's record to the tracking server afterwards: a training that ran offline, or whose server
was away at its end, kept every param, metric, artifact and its model in ``<output dir>/tracking``.

The ``convlstm-sync`` command (``python -m entrypoints.sync <output dir>``); the sending is
``convlstm.tracking.upload.sync``.
"""

from __future__ import annotations

from pathlib import Path

import click

from convlstm.cli import configure_logging, run_cli
from convlstm.config import LOG_LEVELS


@click.command(epilog="""
\b
Examples:
  # a training ran while the server was down; once it is up:
  python -m entrypoints.sync outputs/upstream-20261203-101500
""")
@click.argument("output_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--log-level", default="INFO", type=click.Choice(LOG_LEVELS),
              help="Logging detail.")
def sync(output_dir: Path, log_level: str) -> None:
    """Send what OUTPUT_DIR's training recorded but the tracking server (MLFLOW_TRACKING_URI) has not taken:
    the run, its params, metrics with their times, artifacts, model and registration."""
    import mlflow

    from convlstm.tracking.upload import sync as send

    configure_logging(log_level)
    run_id, sent = send(output_dir)
    if sent:
        click.echo(f"Sent {sent} entries of {output_dir}'s record: run {run_id} in {mlflow.get_tracking_uri()}.")
    else:
        click.echo(f"{output_dir}'s record was already on the tracking server (run {run_id}).")


def main() -> None:
    """``convlstm-sync``: run the command; user errors end as one line and an exit status."""
    run_cli(sync)
