"""Exceptions users can catch. Each message names the file, the key and the shapes involved."""


class MixerlabError(Exception):
    """Base class for mixerlab's own errors."""


class CheckpointError(MixerlabError, ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


class ConfigError(MixerlabError, ValueError):
    """An option with a value of the wrong type or out of range, an unknown option, a bad config file."""


class DataError(MixerlabError, ValueError):
    """A dataset that cannot be found or read."""


class TrainingError(MixerlabError):
    """A run that cannot go on (a NaN loss, a bad resume folder)."""
