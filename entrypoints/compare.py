"""``python -m entrypoints.compare`` (what ``mlflow run . -e compare`` runs): the ``convlstm-compare`` command."""

from convlstm.commands.compare import main

if __name__ == "__main__":
    main()
