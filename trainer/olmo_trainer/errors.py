"""The project's typed errors, and what each means for a job: stop for good, or retry. Torch-free.

Modelled on OLMo-core's src/olmo_core/exceptions.py (one base, a few kinds). Only these types decide
that a failed job is not retried (`python -m olmo_trainer` records InvalidConfig for them, __main__.py):

    OlmoRunError
    ├── ConfigurationError   a config that cannot run (a budget, a batch, `lr: inherit`): permanent
    ├── DataError            data that cannot train (mismatched vocabulary, malformed rows): permanent
    ├── StorageError         storage unreachable, refused or cut short: transient, retried
    └── CheckpointError      a checkpoint missing, uncommitted or not fitting the model

Every other exception of a job is a crash: the process exits 1 and the operator retries it within the
phase's backoff limit. A ValueError that is not one of these (numpy reading a truncated file, a library's
own check) is such a crash, not a verdict on the config.

ConfigurationError and DataError are ValueErrors, StorageError an OSError and CheckpointError a
RuntimeError, so that code catching the built-in kind keeps catching them.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigurationError",
    "DataError",
    "OlmoRunError",
    "StorageError",
    "is_permanent",
]


class OlmoRunError(Exception):
    """Base of the errors this project raises on purpose."""


class ConfigurationError(OlmoRunError, ValueError):
    """The job's configuration cannot run (retrying cannot help): recorded as InvalidConfig."""


class DataError(OlmoRunError, ValueError):
    """The job's data cannot be trained on as configured (retrying cannot help): recorded as InvalidConfig."""


class StorageError(OlmoRunError, OSError):
    """Storage could not be read or written (unreachable, refused, cut short): a retry may succeed."""


class CheckpointError(OlmoRunError, RuntimeError):
    """A checkpoint is missing, uncommitted, or does not fit what is being loaded into it."""


def is_permanent(error: BaseException) -> bool:
    """True for the errors that retrying cannot fix: ConfigurationError and DataError."""
    return isinstance(error, (ConfigurationError, DataError))
