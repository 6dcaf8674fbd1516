"""Errors raised by the index layer.

Every error a user can cause derives from :class:`EmbedxIndexError` (itself a ``ValueError``),
so callers such as the HTTP server can map them to a 4xx response without catching bugs.
"""


class EmbedxIndexError(ValueError):
    """Base class for every user-facing error of the index layer."""


class InvalidInputError(EmbedxIndexError):
    """Bad vectors, ids, k or queries: wrong shape, dtype, NaN/inf, empty, k <= 0."""


class BundleError(EmbedxIndexError):
    """An index bundle cannot be loaded: missing files, bad manifest."""


class ChecksumMismatchError(BundleError):
    """A file in a bundle does not match the checksum its manifest records."""


class FormatVersionError(BundleError):
    """A bundle was written by a newer (or unknown) format version than this code reads."""


class BackendUnavailableError(EmbedxIndexError):
    """An optional backend (for example Lucene through Pyserini and Java) is not installed."""
