"""``python -m entrypoints.prepare`` (what ``mlflow run . -e prepare`` runs): the ``convlstm-prepare`` command."""

from convlstm.commands.prepare import main

if __name__ == "__main__":
    main()
