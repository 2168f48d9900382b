"""Errors of the ops layer shared by the dispatcher and the CUDA glue modules."""

from __future__ import annotations


class ImplementationDeclined(RuntimeError):
    """An implementation cannot run these (valid) arguments, e.g. a kernel's shared memory.

    Raised by an implementation's ``fn``; :mod:`mtlkit.ops` then runs the next choice and says
    so once per shape bucket with a warning.
    """
