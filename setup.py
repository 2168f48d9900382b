"""Build script: the pure-Python package, plus the CUDA extension ``mtlkit._C`` when possible.

``MTLKIT_BUILD_CUDA=auto|1|0`` (default auto): build the extension from ``csrc/`` when nvcc and a
CUDA build of torch are present (auto), always (1, failing loudly), or never (0).
Install with ``pip install --no-build-isolation -e .`` so the build uses the installed torch.
"""

from __future__ import annotations

import glob
import os
import shutil
import site
import sys
import sysconfig

from setuptools import find_packages, setup


def _note(msg: str) -> None:
    print(f"mtlkit setup: {msg}", file=sys.stderr)


def _find_cuda_home() -> str | None:
    """CUDA toolkit root: $CUDA_HOME / $CUDA_PATH, /usr/local/cuda, or the parent of nvcc."""
    for env in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(env)
        if root and os.path.exists(os.path.join(root, "bin", "nvcc")):
            return root
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    if nvcc:
        return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return None


def _wheel_cuda_includes() -> list[str]:
    """Include dirs of the CUDA libraries pip wheels install (cuBLAS, cuSPARSE, ... headers).

    torch's CUDA build depends on ``nvidia-*`` wheels that unpack under
    ``site-packages/nvidia/cu13/include`` (CUDA 13) or ``nvidia/<lib>/include`` (CUDA 12); ATen's
    CUDA headers include them, and a bare toolkit (nvcc only) may not ship them.
    """
    dirs: list[str] = []
    roots = {*site.getsitepackages(), site.getusersitepackages(), sysconfig.get_paths()["purelib"]}
    for sp in sorted(roots):
        root = os.path.join(sp, "nvidia")
        if not os.path.isdir(root):
            continue
        bundled = [os.path.join(root, sub, "include") for sub in ("cu13", "cu12")]
        bundled = [d for d in bundled if os.path.isdir(d)]
        # CUDA 13 wheels bundle every library under nvidia/cu13; CUDA 12 wheels use one
        # folder per library (nvidia/cublas/include, nvidia/cusparse/include, ...).
        dirs += bundled or sorted(glob.glob(os.path.join(root, "*", "include")))
    seen: set[str] = set()
    return [d for d in dirs if not (d in seen or seen.add(d))]


def get_extensions() -> tuple[list, dict]:
    """(ext_modules, cmdclass); empty when the CUDA extension is not built.

    Builds ``mtlkit._C`` (a ``CUDAExtension`` from every ``csrc/*.cpp`` and ``csrc/*.cu``) when
    ``MTLKIT_BUILD_CUDA`` is ``1``, or ``auto`` (default) and nvcc plus a CUDA build of torch are
    present. ``TORCH_CUDA_ARCH_LIST`` defaults to ``8.0;9.0``; ``MAX_JOBS`` bounds ninja.
    """
    mode = os.environ.get("MTLKIT_BUILD_CUDA", "auto").strip().lower()
    if mode not in ("auto", "1", "0"):
        raise SystemExit(f"MTLKIT_BUILD_CUDA must be auto, 1 or 0, got {mode!r}")
    if mode == "0":
        _note("MTLKIT_BUILD_CUDA=0: installing the pure-Python package (ops use references)")
        return [], {}

    def skip(reason: str) -> tuple[list, dict]:
        if mode == "1":
            raise SystemExit(f"MTLKIT_BUILD_CUDA=1 but mtlkit._C cannot be built: {reason}")
        _note(f"not building the CUDA extension mtlkit._C: {reason}; installing the pure-Python "
              "package (ops use the PyTorch references)")
        return [], {}

    try:
        import torch
    except ImportError:
        return skip("torch is not importable (install torch first and use --no-build-isolation)")
    if torch.version.cuda is None:
        return skip(f"torch {torch.__version__} is a CPU-only build")
    cuda_home = _find_cuda_home()
    if cuda_home is None:
        return skip("no CUDA toolkit found (nvcc not in /usr/local/cuda, $CUDA_HOME or PATH)")
    os.environ["CUDA_HOME"] = cuda_home
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/*.cu"))
    if not sources:
        return skip("csrc/ holds no .cpp/.cu sources")
    from torch.utils import cpp_extension

    cpp_extension.CUDA_HOME = cuda_home  # resolved at its import; make sure it is ours
    includes = [os.path.join(here, "csrc"), *_wheel_cuda_includes()]
    debug = os.environ.get("MTLKIT_DEBUG", "0") == "1"
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr",
            "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
            "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_HALF2_OPERATORS__"]
    if debug:
        nvcc = ["-O0", "-g", "-G"]
    if os.environ.get("MTLKIT_PTXAS_VERBOSE", "0") == "1":  # registers/spills per kernel
        nvcc.append("-Xptxas=-v")
    _note(f"building mtlkit._C from {len(sources)} sources with CUDA_HOME={cuda_home}, "
          f"torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
    ext = cpp_extension.CUDAExtension(
        name="mtlkit._C",
        sources=sources,
        include_dirs=includes,
        extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        py_limited_api=False,
    )
    build = cpp_extension.BuildExtension.with_options(use_ninja=True)
    return [ext], {"build_ext": build}


ext_modules, cmdclass = get_extensions()

setup(
    packages=find_packages(include=["mtlkit", "mtlkit.*", "cli", "cli.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
