"""Training: the loop, its loss and metrics, checkpoints and device choice. No MLflow here: the
trainer emits events to callbacks (``convlstm.tracking`` records them)."""
