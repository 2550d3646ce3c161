"""User-facing errors: each carries one clear line that names the bad value and what is allowed.

The CLI prints ``error: <message>`` for any :class:`SplitFTError` and exits with code 2,
without a traceback. Library users can catch them (they are also ``ValueError``s where the
cause is a bad value).
"""

from __future__ import annotations


class SplitFTError(Exception):
    """Base class of every error SplitFT reports to a user."""


class ConfigError(SplitFTError, ValueError):
    """A config field has a value that is not allowed."""


class DataError(SplitFTError, ValueError):
    """A data file is missing, empty, unreadable or too small for the requested split."""


class ModelError(SplitFTError):
    """A model cannot be found, loaded or split."""


class CodecError(SplitFTError, ValueError):
    """A payload that crossed a boundary is truncated, corrupted or of an unknown format."""


class ReplyError(SplitFTError, ValueError):
    """A client's reply decodes but is not what was asked for (shape, dtype, range, finiteness);
    the round loop drops that client, like a failed call."""


class DivergenceError(SplitFTError):
    """Training produced a non-finite loss or gradient: the run stops (its last checkpoint is
    the last good state)."""


NON_FINITE = "holds NaN or infinite values"
"""How every error about a non-finite tensor says so (a run whose clients all fail with it diverged)."""
