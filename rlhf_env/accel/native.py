"""The package's C kernels (``cpu.c``): built once per machine with the system's C compiler, loaded with ctypes.

``library()`` compiles ``cpu.c`` at first use with ``$CC`` (else ``cc`` or ``gcc``; ``-O3 -march=native -fopenmp``,
512-bit vectors where the CPU has them) into ``$RLHF_ENV_CACHE/cpu-<hash>.so``, where the hash covers the source, the
compiler, the flags and the CPU's model and instruction sets: built once per machine, and one file per CPU in a cache
that several share. No Python build step and no pickles; the loops run on torch's own OpenMP runtime. Without a
compiler, or if the build or load fails, it is None, and every caller stays on PyTorch's kernels. A failed build is
remembered next to where the library would be (``cpu-<hash>.failed``, the compiler's messages): later processes warn
and do not try again until that file is deleted, or the source, compiler or CPU changes.

- ``rlhf_env.accel.gelu``: GPT-2's tanh GELU, alone or with its derivative (for the backward);
- ``rlhf_env.accel.decoder``: the sampler's decode-step attention (``attend_step``), and its layers' bias, GELU,
  residual and LayerNorm passes (``bias_gelu``, ``residual_layer_norm``);
- ``rlhf_env.accel.packed_attention``: the packed training forwards' attention, forward and backward;
- ``rlhf_env.sampling``: the sampler's draw of one token per row from its logits (``sample_rows``).

Whether each is used on a model is measured per machine, against PyTorch's, by ``rlhf_env.accel.kernels``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("cpu.c")
FLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp", "-shared", "-fPIC")
PARALLEL_FROM = 1 << 16  # elements below which one thread does it all (a parallel region costs microseconds)

_P, _N, _I, _F = ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int, ctypes.c_float
SIGNATURES = {  # each function's argument types and return type
    "gelu_forward": ([_P, _P, _N, _I], None),
    "gelu_forward_slope": ([_P, _P, _P, _N, _I], None),
    "bias_gelu": ([_P, _P, _P, _N, _I, _I], None),
    "sample_rows": ([_P, _P, _N, _P, _I, _I, _P, _P, _I], _I),  # 1: a row of no finite sum; 2: out of memory
    "residual_layer_norm": ([_P, _P, _P, _P, _P, _F, _P, _N, _I, _I], None),
    "attend_step": ([_P, _P, _P, _P, _N, _N, _P, _N, _P, _I, _I, _I, _I, _F, _P, _I], _I),  # 1: out of memory
    "packed_attention_forward": ([_P, _P, _P, _P, _I, _I, _I, _F, _P, _P, _I], _I),  # (alike)
    "packed_attention_backward": ([_P, _P, _P, _P, _P, _P, _P, _I, _I, _I, _F, _P, _I], _I),
}


@functools.cache
def source_digest() -> str:
    """A short hash of ``cpu.c``: which version of the kernels a measurement of them holds for."""
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]


def compiler() -> str | None:
    """The C compiler to build with: ``$CC``, else ``cc`` or ``gcc`` on the PATH; None if there is none."""
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, built at the first call in this machine's cache if need be; None where they cannot be
    built or loaded."""
    from rlhf_env.accel.kernels import cache_file, cpuinfo

    cc = compiler()
    if cc is None:
        return None
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
        cpu = [cpuinfo("model name") or platform.processor(), cpuinfo("flags")]  # what -march=native compiles for
        digest = hashlib.sha256("\n".join([SOURCE.read_text(), cc, version, *FLAGS, *cpu]).encode()).hexdigest()[:16]
        target = cache_file().with_name(f"cpu-{digest}.so")
        failed = target.with_suffix(".failed")
        if failed.exists():
            warnings.warn(f"the package's C kernels stay off: building them with {cc} failed before (see {failed}; "
                          "delete it to try again)", stacklevel=2)
            return None
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:  # built aside, then moved in atomically
                built = Path(tmp) / target.name
                build = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", str(built), "-lm"], capture_output=True,
                                       text=True, timeout=120)
                if build.returncode != 0:
                    failed.write_text(f"{' '.join([cc, *FLAGS, str(SOURCE)])}\nexit status {build.returncode}\n"
                                      f"{build.stdout}{build.stderr}")
                    warnings.warn(f"the package's C kernels stay off: {cc} could not build them (see {failed}); "
                                  "PyTorch's kernels run instead", stacklevel=2)
                    return None
                os.replace(built, target)
        lib = ctypes.CDLL(str(target))
        for name, (argtypes, restype) in SIGNATURES.items():
            function = getattr(lib, name)
            function.argtypes, function.restype = argtypes, restype
    except (OSError, AttributeError, subprocess.SubprocessError):
        return None
    return lib


def threads(work: int) -> int:
    """The OpenMP threads for ``work`` elements: torch's, or 1 below ``PARALLEL_FROM``."""
    import torch

    return torch.get_num_threads() if work >= PARALLEL_FROM else 1
