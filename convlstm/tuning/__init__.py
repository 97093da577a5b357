"""Hyperparameter sweeps: the search space (``space``). The study and its MLflow runs are in ``convlstm.tracking.sweep``."""
