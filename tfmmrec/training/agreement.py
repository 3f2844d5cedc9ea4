"""Before a multi-worker run trains, its workers check that they are about to do the same thing.

Under ``MultiWorkerMirroredStrategy`` every training step is a collective that all workers join
with the same shapes, the same number of steps and their shares of the same batches, and
nothing in TensorFlow checks that the workers were started alike. Two mistakes otherwise
surface as a collective error in the middle of training, or not at all:

- a backup only some workers see (``train.output_dir`` on each host's own disk): Keras reads
  the backup in ``<output_dir>/backup/chief`` on every worker, so a worker without it starts at
  epoch 0 while the chief resumes from a later epoch, and their collectives stop matching;
- different configs: another ``train.seed`` or ``train.learning_rate`` trains silently (the
  chief's values are recorded, and the in-memory batches are split between workers on the
  assumption that every worker shuffled them alike), another ``train.epochs`` dies in a
  collective with no checkpoint.

``agree`` runs once per run on every worker, after the strategy exists and before anything is
prepared or fitted: one all-gather of a small vector of fixed size (what each worker would
resume from, and a hash of each field that defines the model and the course of training).
Every worker then sees every other's vector and raises the same one-line error when they
differ. Single-process strategies, and a multi-worker strategy whose replicas are all local,
skip it without computing anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from tfmmrec.config import RUNTIME_FIELDS, Config, model_sections
from tfmmrec.errors import ConfigError, TrainingError
from tfmmrec.training.strategy import is_multi_worker, lost_workers_reported
from tfmmrec.training.trainer import resumed_epochs

# The vector's layout never depends on the config or on the code's field list: a collective
# with other shapes on different workers fails with TensorFlow's own shape error, not ours.
LAYOUT_VERSION = 1
MAX_FIELDS = 512  # config fields hashed one by one (about 110 today); more share the last slot
PIECE_BITS = 24  # float32 holds every integer below 2**24 exactly (and all-gathers everywhere)
PIECES = 2  # pieces per hash: 48 bits
HEADER = 1 + PIECES  # layout version, digest of the field names
MAX_LISTED = 5

# Where each fit of a run keeps its backup, under train.output_dir (pipeline._train: early
# stopping's first carve, its later carves, fusion selection, the final fit).
RESUME_POINTS = (("early stopping", "early-stopping/backup"),
                 ("early stopping's later carves", "early-stopping/carve-*/backup"),
                 ("fusion selection", "fusion-selection/backup"),
                 ("training", "backup"))


def needs_agreement(strategy: tf.distribute.Strategy) -> bool:
    """Whether replicas run in other processes: only then can the workers disagree."""
    return (is_multi_worker(strategy)
            and strategy.num_replicas_in_sync > len(strategy.extended.worker_devices))


def agree(config: Config, strategy: tf.distribute.Strategy,
          course_fields: Sequence[str]) -> None:
    """Raise the same one-line error on every worker unless they all define the same model
    and course (``course_fields``: the ``train.*`` fields a resumed run must keep) and would
    resume from the same epochs. Every worker must call it at the same point of a run (it is
    a collective); without replicas in other processes it returns at once."""
    if not needs_agreement(strategy):
        return
    fields = config_fields(config, course_fields)
    groups = field_groups(list(fields))
    own = agreement_vector(groups, fields, resume_epochs(config))
    rows = all_gather(strategy, own)
    check_agreement(own, rows[::len(strategy.extended.worker_devices)], groups,
                    Path(config.train.output_dir))


def config_fields(config: Config, course_fields: Sequence[str]) -> dict[str, Any]:
    """Dotted name → value of every top-level field of the model-defining sections (data and
    its split, towers, model, ranking) and of the ``train`` fields in ``course_fields``."""
    fields = {}
    for section in model_sections():
        values = getattr(config, section)
        for item in dataclasses.fields(values):
            name = f"{section}.{item.name}"
            if name not in RUNTIME_FIELDS:
                fields[name] = getattr(values, item.name)
    for name in course_fields:
        fields[f"train.{name}"] = getattr(config.train, name)
    return fields


def field_groups(names: list[str]) -> list[list[str]]:
    """One field per hash slot; past ``MAX_FIELDS``, the rest share the last slot."""
    if len(names) <= MAX_FIELDS:
        return [[name] for name in names]
    return [[name] for name in names[:MAX_FIELDS - 1]] + [names[MAX_FIELDS - 1:]]


def resume_epochs(config: Config) -> list[int]:
    """Per fit of the run (``RESUME_POINTS``): the epochs its backup holds as this worker sees
    it (0: none; the largest over the later carves)."""
    output = Path(config.train.output_dir)
    return [max((resumed_epochs(backup) for backup in output.glob(pattern)), default=0)
            for _, pattern in RESUME_POINTS]


def digest(text: str) -> list[int]:
    """``PIECES`` integers of ``PIECE_BITS`` bits from the sha256 of ``text``."""
    value = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    mask = (1 << PIECE_BITS) - 1
    return [(value >> (PIECE_BITS * k)) & mask for k in range(PIECES)]


def agreement_vector(groups: list[list[str]], fields: dict[str, Any],
                     epochs: list[int]) -> np.ndarray:
    """``[layout version, digest of the field names…, resume epochs…, field hashes…]``, padded
    to a fixed length (float32: exact for these integers)."""
    hashes = [digest(repr([(name, fields[name]) for name in group])) for group in groups]
    vector = np.zeros(HEADER + len(RESUME_POINTS) + PIECES * MAX_FIELDS, np.float32)
    vector[:HEADER] = [LAYOUT_VERSION, *digest(repr(list(fields)))]
    vector[HEADER:HEADER + len(epochs)] = epochs
    start = HEADER + len(RESUME_POINTS)
    vector[start:start + PIECES * len(hashes)] = np.ravel(hashes) if hashes else []
    return vector


def all_gather(strategy: tf.distribute.Strategy, vector: np.ndarray) -> np.ndarray:
    """``[replicas, len(vector)]``: every replica's copy of its worker's ``vector``, in
    replica order (each worker's local replicas in a row)."""
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda _: tf.constant(vector[None]))
    with lost_workers_reported(strategy):  # a peer gone during the exchange: one line
        return strategy.gather(per_replica, axis=0).numpy()


def check_agreement(own: np.ndarray, workers: np.ndarray, groups: list[list[str]],
                    output: Path) -> None:
    """Raise unless every worker's vector (``workers``, one row each) equals ``own``: first
    for another layout or field list, then for the fields that differ, then for the resume
    epochs."""
    if (workers[:, :HEADER] != own[:HEADER]).any():
        raise ConfigError("the workers run different tfmmrec versions (their configs have "
                          "different fields): install the same tfmmrec on every worker")
    start = HEADER + len(RESUME_POINTS)
    slots = (workers[:, start:] != own[start:]).reshape(len(workers), -1, PIECES).any(axis=(0, 2))
    differing = [name for slot in np.flatnonzero(slots) for name in groups[slot]]
    if differing:
        listed = ", ".join(differing[:MAX_LISTED]) + (
            f" and {len(differing) - MAX_LISTED} more" if len(differing) > MAX_LISTED else "")
        raise ConfigError(f"{listed} differ{'s' if len(differing) == 1 else ''} between "
                          "workers — start every worker with the same config")
    for point, (label, pattern) in enumerate(RESUME_POINTS):
        column = workers[:, HEADER + point]
        if (column != own[HEADER + point]).any():
            mine = int(own[HEADER + point])
            others = _remove_once([int(v) for v in column], mine)
            raise TrainingError(
                f"the workers would resume from different epochs (this worker: {mine}, others: "
                f"{', '.join(map(str, others))}; {label}, {output / pattern}): "
                "train.output_dir must be storage every worker sees (a shared file system), "
                "as the backup is read by all")


def _remove_once(values: list[int], value: int) -> list[int]:
    """``values`` without one occurrence of ``value`` (this worker's own row)."""
    rest = list(values)
    if value in rest:
        rest.remove(value)
    return rest
