"""MLflow entry points: thin command-line doors into the convlstm library (run as ``python -m entrypoints.<name>``)."""
