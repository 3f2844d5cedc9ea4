"""Progress reporting for long loops (catalogue encoding, TFRecord preparation).

On a terminal: a tqdm bar. Anywhere else (a log file, CI, a notebook's captured output, a
benchmark's pipe) a bar rewrites itself many times a second and leaves hundreds of lines, so
the same loop reports one log line every ``interval`` seconds and one when it finishes.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_INTERVAL = 30.0


def on_terminal(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (default: stderr) is an interactive terminal."""
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real file
        return False


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it",
             disable: bool = False, interval: float = DEFAULT_INTERVAL,
             stream: TextIO | None = None) -> Iterable[T]:
    """``iterable``, reporting progress: a tqdm bar on a terminal, periodic lines elsewhere.

    Args:
      iterable: what to loop over.
      desc: what is being done ("encoding text").
      total: number of items (default: ``len(iterable)`` when it has one).
      unit: what one item is ("batch").
      disable: report nothing.
      interval: seconds between two lines when not on a terminal.
      stream: where a bar would go (default stderr); only its terminal-ness is used for lines.
    """
    if disable:
        return iterable
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if on_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, file=stream)
    return LineProgress(iterable, desc=desc, total=total, unit=unit, interval=interval)


def counter(*, desc: str, total: int | None = None, unit: str = "it", disable: bool = False,
            interval: float = DEFAULT_INTERVAL, stream: TextIO | None = None):
    """A progress counter advanced by ``update(n)`` and ended by ``close()``, for work that
    finishes in uneven chunks (shards of many items, from a process pool): a tqdm bar on a
    terminal, a line every ``interval`` seconds (and one at ``close``) elsewhere; arguments as
    for ``progress``."""
    if disable:
        return LineCounter(desc=desc, total=total, unit=unit, interval=interval, silent=True)
    if on_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(desc=desc, total=total, unit=unit, file=stream)
    return LineCounter(desc=desc, total=total, unit=unit, interval=interval)


class LineCounter:
    """``update(n)`` / ``close()`` counterpart of ``LineProgress`` (a tqdm-like counter)."""

    def __init__(self, *, desc: str, total: int | None, unit: str,
                 interval: float = DEFAULT_INTERVAL, clock=time.monotonic, silent: bool = False):
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        self.desc, self.total, self.unit, self.interval = desc, total, unit, interval
        self.clock, self.silent = clock, silent
        self.done, self.closed = 0, False
        self.start = self.last = clock()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if not self.silent and now - self.last >= self.interval:
            logger.info("%s: %s", self.desc, _status(self.done, self.total, self.unit,
                                                     now - self.start))
            self.last = now

    def write(self, text: str) -> None:
        """Print a result line (``tqdm.write``'s counterpart: a bar would redraw below it)."""
        if not self.silent:
            print(text, flush=True)

    def close(self) -> None:
        if not self.silent and not self.closed:
            logger.info("%s: %s, done", self.desc, _status(self.done, self.total, self.unit,
                                                           self.clock() - self.start))
        self.closed = True


def _status(done: int, total: int | None, unit: str, seconds: float) -> str:
    of = f"/{total}" if total is not None else ""
    share = f" ({100 * done / total:.0f}%)" if total else ""
    return f"{done}{of} {unit}{share} in {seconds:.0f} s"


class LineProgress:
    """Iterates ``iterable``, logging ``desc: n/total unit (p%), t s`` every ``interval`` s."""

    def __init__(self, iterable: Iterable[T], *, desc: str, total: int | None, unit: str,
                 interval: float = DEFAULT_INTERVAL, clock=time.monotonic):
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        self.iterable, self.desc, self.total, self.unit = iterable, desc, total, unit
        self.interval, self.clock = interval, clock

    def __iter__(self) -> Iterator[T]:
        start = last = self.clock()
        done = 0
        for item in self.iterable:
            yield item
            done += 1
            now = self.clock()
            if now - last >= self.interval:
                logger.info("%s: %s", self.desc, self._status(done, now - start))
                last = now
        logger.info("%s: %s, done", self.desc, self._status(done, self.clock() - start))

    def _status(self, done: int, seconds: float) -> str:
        return _status(done, self.total, self.unit, seconds)
