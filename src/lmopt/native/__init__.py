"""lmopt's own C kernels, compiled on first use with the system C compiler and called through ctypes.

Small C files (and `bf16.h`, bf16 conversions), for the two places where no maintained library
has a fast CPU kernel that lmopt can call per layer (torchao's x86 kernels are not in its PyPI
wheel; llama.cpp's live inside its own runtime):
- `qa8.c`: 4- and 8-bit weights x int8 activations (the `q4a8`/`q8a8` paths of a quantized linear,
  compress/quantize/native.py), with an AVX-512 VNNI path and an AVX2 one (`qa8_avx2.h`);
- `attention.c`: one decode token's rotary embedding, KV-cache write and attention over the cache,
  and `elementwise.c`: residual add + RMSNorm, SiLU * up (the serving engine's batch-1 step,
  serve/attention.py and serve/runner.py).

They are compiled together (`-O3 -march=native -fopenmp`) into `$LMOPT_HOME/native/`, once per
source, CPU (model and ISA flags) and compiler, atomically (concurrent processes never load a
half-written library). The library links the OpenMP runtime torch has already loaded (same
soname), so it shares torch's threads instead of starting a second pool. Nothing here is chosen
because it exists: the autotuner times the matmul kernels against torch's, and the serving runner
times the C attention against SDPA when it starts (`serve/native_ops.py`). Without a C compiler,
or with `LMOPT_NATIVE=0`, `library()` is None and torch's kernels run as before.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from lmopt.hardware import cpu_flags, detect_hardware
from lmopt.settings import lmopt_home

SOURCES = [Path(__file__).with_name(name) for name in ("qa8.c", "attention.c", "elementwise.c")]
HEADERS = [Path(__file__).with_name(name) for name in ("bf16.h", "qa8_avx2.h")]
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
_P, _I64, _INT, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
SIGNATURES = {
    "lmopt_qa8_linear": [_P, _I64, _I64, _INT, _P, _P, _P, _I64, _P],
    "lmopt_qa8_simd": [],
    "lmopt_rope_attend_one": [_P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _F, _P],
    "lmopt_add_rms_norm": [_P, _P, _P, _I64, _F, _P],
    "lmopt_silu_mul": [_P, _I64, _P],
}


def enabled() -> bool:
    return os.environ.get("LMOPT_NATIVE", "1").lower() not in ("0", "false", "no", "off")


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def source_key() -> str:
    """A hash of the C sources and flags: what timings of these kernels depend on besides the CPU
    (the autotuner's cache is measured again when it changes)."""
    texts = [path.read_text() for path in SOURCES + HEADERS]
    return hashlib.sha256("\n".join([*texts, *FLAGS]).encode()).hexdigest()[:16]


def build(cc: str, flags: list[str] = FLAGS, target: Path | None = None) -> Path:
    """Compile SOURCES with `flags` (once per source, CPU, compiler and flags) and return the
    library's path; `target` overrides where it goes (tests build other variants)."""
    if target is None:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
        # -march=native code for another CPU of the same name but fewer flags would not run here
        cpu = [detect_hardware().cpu, " ".join(sorted(cpu_flags()))]
        key = hashlib.sha256("\n".join([source_key(), *cpu, version, *flags]).encode())
        target = lmopt_home() / "native" / f"lmopt-{key.hexdigest()[:16]}.so"
        if target.exists():
            return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        subprocess.run([cc, *flags, *map(str, SOURCES), "-o", str(built), "-lm"], check=True,
                       capture_output=True, text=True, timeout=120)
        os.replace(built, target)  # atomic: a concurrent process sees no half-written library
    return target


def load(path: Path) -> Any:
    """The library at `path` with every function's argument and result types declared."""
    lib = ctypes.CDLL(str(path))
    for name, args in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = ctypes.c_int, args
    return lib


@lru_cache(maxsize=1)
def library() -> Any | None:
    """The loaded kernel library, or None (disabled, no compiler, compile or load failed)."""
    cc = compiler() if enabled() else None
    if cc is None:
        return None
    try:
        return load(build(cc))
    except (OSError, AttributeError, subprocess.SubprocessError):
        return None


def status() -> str:
    """One line for `lmopt hw`: whether lmopt's C kernels run here, and if not, why."""
    if not enabled():
        return "off (LMOPT_NATIVE=0): torch kernels only"
    if compiler() is None:
        return "no C compiler (cc/gcc, or $CC): torch kernels only"
    lib = library()
    if lib is None:
        return "the C compiler failed to build them: torch kernels only"
    simd = lib.lmopt_qa8_simd()
    if not simd:
        return "built without AVX2 or AVX-512 VNNI: the q4a8/q8a8 kernels are not offered"
    isa = "AVX-512 VNNI" if simd == 2 else "AVX2"
    return f"built with {isa}: q4a8/q8a8 timed against torch's kernels, C attention for batch-1 decode"


def available() -> bool:
    """The library is built with a vector path (AVX-512 VNNI or AVX2); the portable loops are not worth timing."""
    lib = library()
    return lib is not None and bool(lib.lmopt_qa8_simd())
