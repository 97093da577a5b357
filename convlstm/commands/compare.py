"""Compare the baseline and the upstream experiment on the same held-out times.

The ``convlstm-compare`` command (MLflow runs it as ``python -m entrypoints.compare``): the flags come from
``convlstm.config.CompareSettings``; the run is ``convlstm.tracking.reports.compare_tracked``: two trained
models (run ids or model URIs; the test split of ``--data`` is forecast here) or two ``predictions.nc`` files
and a ground-truth file, recorded as an MLflow comparison run: headline metrics under ``compare/``, the full
score tables, figures and ``report.md``.
"""

from __future__ import annotations

import click

from convlstm.cli import run_cli, settings_command
from convlstm.config import CompareSettings

EPILOG = """
\b
Examples:
  mlflow run . -e compare --env-manager local --experiment-name convlstm-demo   # newest runs of the experiment
  mlflow run . -e compare --env-manager local -P baseline=<run id> -P upstream=<run id>
  # two ensembles of seeds (parent runs of train -P seeds=...), or several runs a side
  mlflow run . -e compare --env-manager local -P baseline=<parent run id> -P upstream=<run id>,<run id>,<run id>
  convlstm-compare --baseline <run id> --upstream <run id> --data era5.nc
  convlstm-compare --baseline-predictions base/predictions.nc --upstream-predictions up/predictions.nc \\
      --ground-truth era5.nc
"""


@settings_command(CompareSettings, EPILOG)
def compare(settings: CompareSettings) -> None:
    """Score baseline vs upstream against the truth, persistence, climatology and a ridge regression, with uncertainty."""
    from convlstm.tracking.reports import compare_tracked

    result, report = compare_tracked(settings)
    seeds = f"{result.seeds.verdict}\n" if result.seeds is not None else ""
    click.echo(f"{result.verdict}\n{seeds}{result.linear_verdict}\nReport: {report}")


def main() -> None:
    """``convlstm-compare``: run the command; user errors end as one line and an exit status."""
    run_cli(compare)
