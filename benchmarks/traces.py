"""Host-CPU events of a tf.profiler trace, for the benchmarks that break a step down by op."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def host_events(logdir: Path) -> Iterator[tuple[str, float]]:
    """``(event name, milliseconds)`` of every host-CPU event in the newest ``.xplane.pb``
    under ``logdir`` (nothing if tf.profiler wrote none). TF op executions are named
    ``scope:OpType``; runtime wrappers that nest them (``::`` or ``__inference`` in the name)
    are yielded too, for the caller to keep or skip."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    files = sorted(logdir.rglob("*.xplane.pb"))
    if not files:
        return
    space = xplane_pb2.XSpace()
    space.ParseFromString(files[-1].read_bytes())
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        names = {key: value.name for key, value in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                yield names.get(event.metadata_id, ""), event.duration_ps / 1e9
