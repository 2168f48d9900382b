"""User-facing errors.

Every failure a user can cause (a missing file, a bad shape, an unknown name) raises a subclass of
:class:`MtlkitError`. Its message is one line naming the problem and, when known, the fix; the CLI
prints it and exits with status 2, without a traceback. Bugs raise ordinary exceptions.
"""

from __future__ import annotations


class MtlkitError(Exception):
    """Base class: ``MtlkitError(problem, fix)`` renders as ``"<problem>; <fix>"``."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; {fix}" if fix else problem)


class ConfigError(MtlkitError):
    """An option or configuration value is invalid."""


class DataError(MtlkitError):
    """A dataset file or raw input is missing, corrupt or inconsistent."""


class CheckpointError(MtlkitError):
    """A checkpoint is missing, corrupt, or belongs to another model."""


class UnknownNameError(MtlkitError):
    """A name (arch, backbone, dataset, task, weighting, kernel) is not registered."""


class OutputError(MtlkitError):
    """A file or folder cannot be written: full disk, read-only location, no permission, ..."""

    @classmethod
    def from_os_error(cls, path: object, e: OSError, action: str = "write") -> OutputError:
        """``cannot write PATH: <reason> (<ERRNO>); <fix>`` from the ``OSError`` of a write."""
        return cls(f"cannot {action} {str(path)!r}: {describe_os_error(e)}", _OS_FIXES.get(
            _errno_name(e), "choose another output location"))


_OS_FIXES = {
    "ENOSPC": "free disk space or choose another output location",
    "EFBIG": "the file exceeds the size this system allows; free space, raise the limit "
             "(ulimit -f) or choose another output location",
    "EDQUOT": "your disk quota is used up; free space or choose another output location",
    "EROFS": "the location is on a read-only file system; choose another output location",
    "EACCES": "you have no permission to write there; choose another output location",
    "EPERM": "writing there is not permitted; choose another output location",
    "ENOTDIR": "a part of the path is a file, not a folder; choose another output location",
    "EISDIR": "it is a folder; pass a file path",
    "ENAMETOOLONG": "use a shorter path",
}


def _errno_name(e: OSError) -> str:
    import errno as _errno

    return _errno.errorcode.get(e.errno or 0, "")


def describe_os_error(e: OSError) -> str:
    """``"No space left on device (ENOSPC)"``: the reason of an ``OSError`` in one phrase."""
    import os

    name = _errno_name(e)
    reason = e.strerror or (os.strerror(e.errno) if e.errno else str(e))
    if name == "EFBIG":
        reason = "file too large for this system (file size limit)"
    return f"{reason} ({name})" if name else reason
