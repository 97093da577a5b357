"""``python -m entrypoints.sync <output dir>``: the ``convlstm-sync`` command."""

from convlstm.commands.sync import main

if __name__ == "__main__":
    main()
