"""``python -m entrypoints.infer`` (what ``mlflow run . -e infer`` runs): the ``convlstm-infer`` command."""

from convlstm.commands.infer import main

if __name__ == "__main__":
    main()
