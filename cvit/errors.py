"""Errors the user can act on. The CLI prints their message alone, without a traceback."""


class CvitError(Exception):
    """Base of every error caused by the user's input (config, data, run directory)."""


class ConfigError(CvitError):
    """A config file or override is invalid; the message names the key and the file."""


class DataError(CvitError):
    """A data file or record is invalid; the message names the file and the record or line."""


class RunDirError(CvitError):
    """A run directory cannot be used (e.g. resumed with a different config)."""
