"""The project's own deployment scripts (run from a checkout; not part of the installed ``convlstm`` package)."""
