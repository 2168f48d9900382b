"""Load the compiled extension ``mtlkit._C`` (built from ``csrc/`` by ``setup.py``).

Importing ``mtlkit._C`` runs its static ``TORCH_LIBRARY`` / ``TORCH_LIBRARY_FRAGMENT`` /
``TORCH_LIBRARY_IMPL`` initialisers, which register the ``torch.ops.mtlkit.*`` schemas and their
CUDA kernels. This module never raises: when the extension is absent (pure-Python install, CPU
build of torch, ABI mismatch) it records why in :data:`CUDA_OPS_ERROR` and the public ops use the
references of :mod:`mtlkit.ops.reference`.
"""

from __future__ import annotations

import torch

HAS_CUDA_OPS: bool = False
"""True when ``mtlkit._C`` imported and registered ``torch.ops.mtlkit``."""

CUDA_OPS_ERROR: str | None = None
"""Why the extension is not available (None when it is)."""


def _load() -> tuple[bool, str | None]:
    if torch.version.cuda is None:
        return False, "torch is a CPU-only build (torch.version.cuda is None)"
    try:
        from mtlkit import _C  # noqa: F401  (registration side effects)
    except ImportError as exc:
        return False, (f"the CUDA extension mtlkit._C is not built ({exc}); build it with "
                       "`pip install --no-build-isolation -e .` where nvcc is available")
    except OSError as exc:  # e.g. a missing or mismatched shared library
        return False, f"the CUDA extension mtlkit._C failed to load: {exc}"
    if not hasattr(torch.ops, "mtlkit") or not hasattr(torch.ops.mtlkit, "bfe_attention"):
        return False, "mtlkit._C imported but did not register torch.ops.mtlkit"
    return True, None


HAS_CUDA_OPS, CUDA_OPS_ERROR = _load()
