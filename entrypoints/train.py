"""``python -m entrypoints.train`` (what ``mlflow run . -e train`` runs): the ``convlstm-train`` command."""

from convlstm.commands.train import main

if __name__ == "__main__":
    main()
