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
