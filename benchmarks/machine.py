"""What a speed figure was measured on: the CPU, its vector units and TF's kernel choice.

Speed ratios here move with the machine as much as with the code: this project's AVX2 machine
ran the text encoder's padded path 6.2× slower than its AVX-512 one and the full-softmax train
step about 5.5× slower, the TFRS tutorial loop only 2.8× (docs/speed.md). So every speed
result records this.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The extensions that change which kernels TF and oneDNN pick for float32 / bfloat16 products.
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")


def describe() -> dict:
    """``{"cpu", "cpus", "vector_units", "onednn", "python"}`` of this process's machine.

    ``onednn``: whether TensorFlow runs its oneDNN kernels (TF turns them on by default only
    on CPUs with AVX-512 VNNI / BF16 or AMX, or when ``TF_ENABLE_ONEDNN_OPTS=1``).
    """
    from tensorflow.python.util import _pywrap_util_port

    from tfmmrec.towers.precision import _cpu_flags  # the flags the bfloat16 path reads

    flags = _cpu_flags()
    return {"cpu": _cpu_model(), "cpus": os.cpu_count(),
            "vector_units": [flag for flag in VECTOR_FLAGS if flag in flags],
            "onednn": bool(_pywrap_util_port.IsMklEnabled()),
            "python": platform.python_version()}


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux
        return platform.processor() or "unknown"
    names = (line.partition(":")[2].strip() for line in lines if line.startswith("model name"))
    return next(names, "unknown")
