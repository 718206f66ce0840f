"""Errors a user can cause. Each message says what to do; the CLI and API translate them at the edge."""


class ClipdexError(Exception):
    """Base class for errors caused by input, configuration or the state of a store."""


class StoreNotFoundError(ClipdexError):
    """The store directory does not exist or holds no store."""


class StoreFormatError(ClipdexError):
    """The store was written by a newer clipdex, or is damaged."""


class StoreBusyError(ClipdexError):
    """Another process kept the store's writer lock for longer than the timeout."""


class ModelMismatchError(ClipdexError):
    """A store was opened with another embedding model than the one it was built with."""


class ModelLoadError(ClipdexError):
    """A model id or directory could not be loaded as a supported model."""


class NotFoundError(ClipdexError):
    """An image id or path is not in the store."""


class BadInputError(ClipdexError):
    """A query or argument is malformed (empty text, bad k, unreadable query image...)."""


class StorageFullError(ClipdexError):
    """The disk has no room for what had to be written; nothing stored was lost."""


class GenerationError(ClipdexError):
    """A vision-language model failed while answering; the conversation stays as it was."""
