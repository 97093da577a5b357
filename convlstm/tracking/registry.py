"""The model registry: each training registers a version of the model, tagged with its experiment;
a comparison gives the better version the alias ``champion`` and the other ``challenger``."""

from __future__ import annotations

import logging

import mlflow
from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)


def describe_version(name: str, version: str, run_id: str, experiment_type: str, test_rmse_mm: float) -> None:
    """Tag a newly registered version with its experiment and say where it came from.

    Parameters
    ----------
    name, version : str
        The registered model and its version.
    run_id : str
        The training run that logged it.
    experiment_type : str
        ``baseline`` or ``upstream``.
    test_rmse_mm : float
        The best model's test RMSE (NaN without a test split).
    """
    client = MlflowClient()
    client.set_model_version_tag(name, version, "experiment_type", experiment_type)
    client.update_model_version(name, version, description=f"{experiment_type} model from run {run_id} "
                                                          f"(test RMSE {test_rmse_mm:.3f} mm)")
    mlflow.set_tag("registered_model", f"{name}/{version}")
    logger.info("Registered model %s version %s.", name, version)


def set_champion(run_ids: dict[str, str], rmse: dict[str, float], registered_model_name: str) -> dict[str, str]:
    """Give the registered version of the better run (lower test RMSE) the alias ``champion``, the other
    ``challenger``, so ``models:/<name>@champion`` serves the winner.

    Parameters
    ----------
    run_ids : dict of str to str
        ``{"baseline": run id, "upstream": run id}``.
    rmse : dict of str to float
        Each run's RMSE on the compared times.
    registered_model_name : str
        The registered model holding their versions.

    Returns
    -------
    dict of str to str
        ``alias -> version``; empty (with a warning) when a run has no registered version.
    """
    client = MlflowClient()
    versions = {}
    for name, run_id in run_ids.items():
        found = client.search_model_versions(f"name='{registered_model_name}' and run_id='{run_id}'")
        if not found:
            logger.warning("Run %s has no version of %s in the registry; no alias set.", run_id, registered_model_name)
            return {}
        versions[name] = max(found, key=lambda v: int(v.version)).version
    winner = min(rmse, key=rmse.get)  # type: ignore[arg-type]
    aliases = {}
    for name, version in versions.items():
        alias = "champion" if name == winner else "challenger"
        client.set_registered_model_alias(registered_model_name, alias, version)
        aliases[alias] = version
    logger.info("Registry %s: champion = version %s (%s), challenger = version %s.", registered_model_name,
                aliases.get("champion"), winner, aliases.get("challenger"))
    return aliases
