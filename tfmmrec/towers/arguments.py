"""Constructor arguments of the public layers and models, checked where they are given.

Keras accepts a string where a list of names belongs (``ItemTower("text", 8)`` had the
modalities ``t, e, x, t``), a negative width until a ``Dense`` deep inside names its own
``units``, and a temperature of 0 until the loss is NaN. Each check here raises one
``ValueError`` naming the argument and the value, as the config's own checks do.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any


def _fail(name: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"{name} must be {expected}, got {value!r}")


def positive_int(name: str, value: Any) -> int:
    """An integer ≥ 1 (numpy integers too; not a bool or a float)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise _fail(name, value, "an integer >= 1")
    return int(value)


def positive_float(name: str, value: Any) -> float:
    """A finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value <= 0:
        raise _fail(name, value, "a finite number > 0")
    return float(value)


def non_negative(name: str, value: Any) -> float:
    """A finite number ≥ 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value < 0:
        raise _fail(name, value, "a finite number >= 0")
    return float(value)


def rate(name: str, value: Any) -> float:
    """A dropout rate in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise _fail(name, value, "a rate in [0, 1)")
    return float(value)


def widths(name: str, value: Any) -> tuple[int, ...]:
    """A sequence of layer widths, each an integer ≥ 1 (``"16"`` is not two layers)."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise _fail(name, value, "a sequence of integers >= 1")
    return tuple(positive_int(f"{name}[{i}]", width) for i, width in enumerate(value))


def names(name: str, value: Any, unique: bool = True) -> tuple[str, ...]:
    """A sequence of strings (a lone string is refused: its characters are not names)."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise _fail(name, value, "a sequence of names (a list of strings)")
    out = tuple(value)
    for i, item in enumerate(out):
        if not isinstance(item, str):
            raise _fail(f"{name}[{i}]", item, "a string")
    if unique and len(set(out)) != len(out):
        repeated = sorted({item for item in out if out.count(item) > 1})
        raise ValueError(f"{name} names {', '.join(map(repr, repeated))} more than once")
    return out


def known(name: str, given: Iterable[str], allowed: Iterable[str]) -> None:
    """Every name in ``given`` is one of ``allowed`` (a misspelt one would be ignored)."""
    allowed = tuple(allowed)
    unknown = [item for item in given if item not in allowed]
    if unknown:
        raise ValueError(f"{name}: unknown modality {', '.join(map(repr, unknown))}; the "
                         f"model's are {', '.join(allowed) or 'none'}")
