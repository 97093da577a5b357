"""``python -m entrypoints.sweep`` (what ``mlflow run . -e sweep`` runs): the ``convlstm-sweep`` command."""

from convlstm.commands.sweep import main

if __name__ == "__main__":
    main()
