"""Constructor arguments of the public layers and models, checked where they are given.

Keras accepts a string where a list of names belongs (``ItemTower("text", 8)`` had the
modalities ``t, e, x, t``), a negative width until a ``Dense`` deep inside names its own
``units``, and a temperature of 0 until the loss is NaN. Each check here raises one
``ValueError`` naming the argument and the value, as the config's own checks do; a value of
the wrong kind altogether (a number where a mapping belongs) is a ``TypeError``.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Iterable, Mapping
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
    if unique and len(set(out)) != len(out):  # Counter: a vocabulary can hold a million ids
        repeated = sorted(item for item, count in Counter(out).items() if count > 1)
        more = f" (and {len(repeated) - 10} more)" if len(repeated) > 10 else ""
        raise ValueError(f"{name} names {', '.join(map(repr, repeated[:10]))}{more} more "
                         "than once")
    return out


def mapping(name: str, value: Any, of: str, optional: bool = True) -> dict:
    """A mapping (``None``: empty if ``optional``), copied; ``of`` says what it maps (``0.5``
    for a per-modality mapping would otherwise be "'float' object is not iterable")."""
    if value is None and optional:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping of {of}, got {value!r}")
    return dict(value)


def one_of(name: str, value: Any, allowed: Iterable[str]) -> str:
    """One of the ``allowed`` strings."""
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise _fail(name, value, f"one of {', '.join(map(repr, allowed))}")
    return value


def known(name: str, given: Iterable[str], allowed: Iterable[str]) -> None:
    """Every name in ``given`` is one of ``allowed`` (a misspelt one would be ignored)."""
    allowed = tuple(allowed)
    unknown = [item for item in given if item not in allowed]
    if unknown:
        raise ValueError(f"{name}: unknown modality {', '.join(map(repr, unknown))}; the "
                         f"model's are {', '.join(allowed) or 'none'}")
