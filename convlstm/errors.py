"""The errors a user can cause and fix, under one base, so a command line turns any of them into one
line and an exit status (``convlstm.cli.run_cli``) instead of a traceback.

Each message names what is wrong (the setting, file, variable or run) and how to fix it. Usage
errors exit with status 2, failures with status 1.
"""

from __future__ import annotations

import signal


class ConvLSTMError(Exception):
    """Base of every error convlstm raises for bad input or a failed step.

    Attributes
    ----------
    exit_code : int
        The process exit status a command line uses for this error.
    """

    exit_code = 1


class ConfigError(ConvLSTMError, ValueError):
    """A setting, flag or argument is invalid or contradicts another (a usage error, exit status 2).

    Parameters
    ----------
    message : str
        What is wrong and how to fix it.
    setting : str, optional
        The setting's name (``num_epochs``), so a command line can name its flag (``--num-epochs``).
    """

    exit_code = 2

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class DataError(ConvLSTMError, ValueError):
    """Input data (a file, variable, grid, region or time axis) cannot be used."""


class ModelError(ConvLSTMError):
    """A checkpoint, model reference or model artifact cannot be found or read."""


class TrackingError(ConvLSTMError):
    """The tracking store cannot be used, or holds no run or experiment of that name."""


class TrainingDiverged(ConvLSTMError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint is kept."""


class StorageError(ConvLSTMError):
    """An output file cannot be written: the disk is full, or the folder is read-only or not ours.

    Parameters
    ----------
    message : str
        The path, the cause and what to do.
    setting : str, optional
        The setting that chose the place (``output_dir``), so a command line can name its flag.
    """

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class Interrupted(ConvLSTMError):
    """A stop was asked for (SIGTERM from ``timeout``, Slurm, Kubernetes or docker; SIGINT from Ctrl-C).

    The exit status is ``128 + signal number`` (143 for SIGTERM, 130 for SIGINT), as shells report a
    process killed by that signal, so schedulers see the stop for what it was.

    Parameters
    ----------
    signum : int
        The signal received.
    detail : str
        What was done on stopping, after ``"SIGTERM received: "`` in the message.

    Attributes
    ----------
    signal_name : str
        ``SIGTERM`` or ``SIGINT``.
    """

    def __init__(self, signum: int, detail: str = "stopped.") -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(f"{self.signal_name} received: {detail}")
