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
    logger.info("Registered model %s version %s.", name, version)


def register_run_model(run_id: str, name: str, experiment_type: str, test_rmse_mm: float,
                       model_id: str | None = None) -> str | None:
    """Register a model the run logged under ``name``, once: a version already made from that model is returned
    as it is (a record sent again after an outage, a sweep rerun with the same best trial).

    Parameters
    ----------
    run_id : str
        The training run.
    name : str
        The registered model.
    experiment_type : str
        ``baseline`` or ``upstream``.
    test_rmse_mm : float
        The run's test RMSE, for the version's description.
    model_id : str, optional
        The logged model (default: the run's first; a continued run logs one per training).

    Returns
    -------
    str or None
        The version; None when the run logged no model.
    """
    if model_id is None:
        logged = mlflow.search_logged_models(filter_string=f"source_run_id = '{run_id}'", output_format="list")
        if not logged:
            logger.warning("Run %s has no logged model; nothing registered.", run_id)
            return None
        model_id = logged[0].model_id
    source = f"models:/{model_id}"  # a version's model_id stays unset in this MLflow; its source names the model
    versions = [int(v.version) for v in MlflowClient().search_model_versions(f"name='{name}' and run_id='{run_id}'")
                if v.source == source]
    if versions:
        return str(max(versions))
    version = str(mlflow.register_model(source, name).version)
    describe_version(name, version, run_id, experiment_type, test_rmse_mm)
    return version


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
