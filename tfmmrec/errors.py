"""The error hierarchy every layer raises: messages say what is wrong, where, and how to fix it.

The CLI prints these without a stack trace and exits non-zero; the Python API raises them.
"""

from __future__ import annotations


class TfmmrecError(Exception):
    """Base class for every error tfmmrec raises on purpose."""


class EnvironmentSetupError(TfmmrecError):
    """The Python/TensorFlow environment cannot run tfmmrec as it is."""


class ConfigError(TfmmrecError):
    """A configuration value or file is invalid."""


class DataError(TfmmrecError):
    """A dataset folder, table, row or media file is invalid."""


class MediaDecodeError(DataError):
    """An image or audio file (or bytes) could not be decoded."""


class TrainingError(TfmmrecError):
    """Training cannot start or continue (e.g. unwritable output, bad checkpoint)."""


class ExportError(TfmmrecError):
    """A model could not be exported, or an export is invalid."""


class ServingError(TfmmrecError):
    """A serving request failed (connection, deadline, status from the server)."""
