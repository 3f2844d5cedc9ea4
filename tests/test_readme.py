"""The README's Python blocks are Python: each compiles (one held a line that was pseudo-code
inside a ```python fence, and failed for whoever pasted it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = [(README.read_text(encoding="utf-8")[:m.start()].count("\n") + 1, m.group(1))
          for m in re.finditer(r"```python\n(.*?)```", README.read_text(encoding="utf-8"),
                               re.S)]


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_each_python_block_compiles(line, code):
    compile(code, f"README.md, the block at line {line}", "exec")
