"""``python -m entrypoints.make_data`` (what ``mlflow run . -e make_data`` runs): the ``convlstm-make-data`` command."""

from convlstm.commands.make_data import main

if __name__ == "__main__":
    main()
