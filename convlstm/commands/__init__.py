"""The command-line programs (``convlstm-train``, ``convlstm-infer``, ``convlstm-compare``, ``convlstm-make-data``):
each builds its settings from the flags and calls one library function. ``entrypoints/`` runs the same commands
for ``mlflow run``."""
