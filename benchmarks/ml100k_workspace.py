"""The prepared ML-100K workspace the offline CF benchmarks share (``linear_cf_blocks.py``,
``cold_start_leads.py``): ``configs/ml100k.yaml``, encoders from the cache, no training."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def prepared_ml100k(overrides: tuple[str, ...] = ()):
    """``(config, workspace)`` run from the repository root, or ``None`` after saying why when
    ../shared is missing (the caller exits with status 2)."""
    os.chdir(REPO)
    import tfmmrec
    from tfmmrec import pipeline

    config = tfmmrec.load_config("configs/ml100k.yaml", ["train.verbose=0", *overrides])
    if not Path(config.data.path).exists():
        print(f"needs ../shared ({config.data.path} not found)", file=sys.stderr)
        return None
    return config, pipeline.prepare(config, progress=False)
