"""MLflow bookkeeping, the only place (with ``convlstm.pyfunc``) that imports mlflow: run lifecycle
(``runs``), model and resume references (``uris``), the model registry (``registry``), training runs
(``training``), ensembles of seeds under one parent run (``ensemble``) and inference and comparison runs
(``reports``).

With the tracking URI unset MLflow uses ``sqlite:///mlflow.db`` in the working directory with artifacts
under ``./mlruns``.
"""
