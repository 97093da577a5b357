"""The one exception type users see for bad input, so callers can catch it and CLIs print it cleanly."""


class DataError(ValueError):
    """Input data, a region or an option is unusable; the message names it and says how to fix it."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint is kept."""
