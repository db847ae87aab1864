"""The exceptions coffea-hpc raises.

One root type, one subclass per family. A `UserError` is something the analyst can fix from
what the message says (a path, a field, a name): the command line prints it as one line and
exits, without a traceback. Everything else is a bug or an infrastructure failure and keeps
its traceback.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "ChunkFailedError",
    "CoffeaHPCError",
    "FilesetError",
    "MergeError",
    "MissingDependencyError",
    "OverlapError",
    "ProcessorLoadError",
    "ReadError",
    "RemoteEnvironmentError",
    "SiteError",
    "UserError",
]


class CoffeaHPCError(Exception):
    """Root of every error raised by coffea-hpc."""


class UserError(CoffeaHPCError):
    """An error in what the user supplied; its message alone says what to fix."""


class FilesetError(UserError):
    """A fileset that cannot be read, or a file in it that cannot be opened."""


class ProcessorLoadError(UserError):
    """A processor specification that does not name a usable processor."""


class SiteError(UserError):
    """A site configuration that is unknown, invalid or incomplete."""


class MissingDependencyError(UserError):
    """An optional package that the chosen feature needs is not installed."""


class RemoteEnvironmentError(UserError):
    """A remote endpoint whose software differs from the driver's, or that cannot be used
    (not logged in, unknown endpoint)."""


class BackendError(CoffeaHPCError):
    """A backend that failed to start, or lost its workers beyond recovery."""


class ReadError(CoffeaHPCError, OSError):
    """Data that could not be read while processing: a damaged basket, a truncated file.

    uproot reports a damaged basket as a ValueError or a decompression error, which would
    look like a bug in the processor; the worker re-raises what fails inside uproot as this
    (an OSError, the family ``--skip-bad-files`` skips, as coffea's ``skipbadfiles`` does),
    so the run can tell a bad file from a bad analysis and give up on the file as a whole.
    """


class MergeError(CoffeaHPCError):
    """Partial results that cannot be merged (incompatible types or binnings)."""


class OverlapError(MergeError):
    """Two partial results both claim the same entries: adding them would double count."""


class ChunkFailedError(CoffeaHPCError):
    """A chunk failed and the error policy says to stop.

    It carries what was computed before the stop (`partial`) and the work still to do
    (`remaining`), so that nothing computed so far is lost: `partial + compute(remaining)`
    gives the full result once the cause is fixed.
    """

    def __init__(self, message: str, *, partial: object = None, remaining: object = None,
                 failures: tuple[object, ...] = ()):
        super().__init__(message)
        self.partial = partial
        self.remaining = remaining
        self.failures = failures
        """Every unit that failed, the one that stopped the run last."""
