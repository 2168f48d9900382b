"""The CPU emulator of the CUDA kernels (tests/ops/emu), built once per test session.

``tests/ops/emu/module.cpp`` compiles kernel source from ``csrc/`` as ordinary C++ against a CPU
emulation of the CUDA execution model (``cuda_emu.h``), so kernels that have not run on a GPU
are still executed by the tests. Building takes about a minute on two cores (ninja, the host
C++ compiler; no CUDA toolkit needed).
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EMU = Path(__file__).resolve().parent / "emu"

# Emulation modes (cuda_emu.h): warps in lockstep or greedy (one runs ahead to its next
# __syncthreads), cp.async landing at the wait or at once; the hardware may do any of these.
MODES = {
    "lockstep": dict(greedy=False, early_copies=False),
    "greedy": dict(greedy=True, early_copies=False),
    "greedy_early_copies": dict(greedy=True, early_copies=True),
}


@functools.cache
def emulator():
    """The compiled module (tc_forward, tc_backward, hdc_dw, hdc_grad_x, Options, Operand)."""
    from torch.utils.cpp_extension import load

    if shutil.which("ninja") is None:  # the venv's ninja (a dependency) when it is not on PATH
        os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]
    # -fno-strict-aliasing: the kernels type-pun through vector types (a uint4 load read back
    # as T elements), which nvcc compiles as written and an optimising g++ otherwise may not.
    build = ROOT / "build" / "emu"
    build.mkdir(parents=True, exist_ok=True)
    return load(
        name="mtlkit_emu",
        sources=[str(EMU / n) for n in ("module.cpp", "tc_emu.cpp", "hdc_emu.cpp")],
        extra_include_paths=[str(EMU), str(ROOT / "csrc")],
        extra_cflags=["-O2", "-std=c++20", "-fno-strict-aliasing", "-Wno-unknown-pragmas"],
        build_directory=str(build),
        verbose=False,
    )


def options(mode: str, seed: int = 1):
    """emu.Options for one of MODES with thread-order seed `seed`."""
    return emulator().Options(seed=seed, **MODES[mode])
