"""Towers on Beam: ``tfmmrec encode --runner NAME`` — every frozen encoder over the catalogue.

The driver builds each frozen encoder exactly as training does (so its identity — settings and
weights hash — is the one training will look for), saves it as a SavedModel next to the output,
and plans shard jobs with ``towers.features.plan_encode`` (resume included). It reads the items
table in chunks (``data.stream``: checks, digests, unique ids) and stages one shard's job at a
time, so its memory does not grow with the catalogue. Each Beam worker
loads every encoder once (``setup``, shared by the worker's threads through
``apache_beam.utils.shared``) and runs ``towers.features.encode_shard`` — the local path's own
code — on its jobs; the driver writes each ``manifest.json`` last. Items are read from
``train.tfrecords`` when set (pre-decoded: no media decoding on the workers), else decoded from
the dataset folder, which must then be mounted at the same path on every worker.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from apache_beam.utils import shared

from tfmmrec import modalities
from tfmmrec.beam.runner import ShardJobFn, pipeline_options, run_shard_jobs
from tfmmrec.config import Config
from tfmmrec.data.dataset import Dataset
from tfmmrec.data.stream import ItemsStream
from tfmmrec.data.tfrecords import join_path
from tfmmrec.towers import features
from tfmmrec.towers.encoders import Encoder

SAVED_ENCODER = ".encoder-savedmodel"


def input_signature(modality: str, settings: Mapping[str, Any]):
    """What an encoder takes: the batches ``encode_shard`` builds (the modality's
    ``encoder_input_spec`` under these preprocessing settings)."""
    return modalities.get(modality).encoder_input_spec(settings)


def save_encoder(encoder: Encoder, path: str, settings: Mapping[str, Any]) -> None:
    """The frozen encoder as a SavedModel with one ``encode`` function (any gfile path)."""
    module = tf.Module()
    module.encoder = encoder
    module.encode = tf.function(lambda raw: encoder(raw, training=False),
                                input_signature=[input_signature(encoder.modality, settings)])
    tf.saved_model.save(module, path)


class _Encoders:
    """The loaded SavedModels of one worker process (weak-referenceable for ``Shared``)."""

    def __init__(self, paths: dict[str, str]):
        from tfmmrec._env import register_custom_ops

        register_custom_ops(scann=False)  # the text encoder tokenises with TF-Text ops
        self.models = {modality: tf.saved_model.load(path) for modality, path in paths.items()}


class EncodeShardFn(ShardJobFn):
    """One features shard per job; the encoders are loaded once per worker process."""

    def __init__(self, saved_encoders: dict[str, str]):
        super().__init__()
        self.saved_encoders = saved_encoders
        self.shared = shared.Shared()

    def setup_worker(self) -> None:
        paths = self.saved_encoders
        self.encoders = self.shared.acquire(lambda: _Encoders(paths)).models

    def run(self, job):
        model = self.encoders[job["modality"]]
        return features.encode_shard(job, lambda raw: np.asarray(model.encode(raw)))


def encode(config: Config, output: str | os.PathLike | None = None, *, runner: str,
           beam_args: Sequence[str] = (), dataset: Dataset | ItemsStream | None = None,
           shards: int | None = None, workers: int | None = None,
           progress: bool = False) -> dict[str, features.FeaturesManifest]:
    """``towers.features.encode`` as one Beam pipeline over every encoder's shards.

    Without ``dataset`` the items table is streamed (``data.stream.ItemsStream``): the driver
    checks it and stages one shard's job at a time, so its memory does not grow with the
    catalogue. ``progress``: report the shards finished while the pipeline runs (the
    command line does unless ``-q``).
    """
    workers = workers or os.cpu_count() or 1
    options = pipeline_options(runner, beam_args, workers)  # before any output is touched
    output, dataset = features.resolve_output(config, output, dataset)
    runs = [features.plan_encode(config, dataset, encoder, output, shards=shards,
                                 workers=workers)
            for encoder in features.frozen_encoders(config, dataset).values()]
    saved = {}
    for run in runs:
        if run.todo:
            saved[run.modality] = join_path(run.directory, SAVED_ENCODER)
            save_encoder(run.encoder, saved[run.modality],
                         modalities.settings_from_config(config))
    staged: list[str] = []  # each staged job's modality, in staging order

    def jobs():
        for run in runs:
            for job in run.todo_jobs():
                staged.append(run.modality)
                yield job

    summaries = run_shard_jobs(jobs(), output, EncodeShardFn(saved), options, "encode",
                               progress=progress)
    manifests = {}
    for run in runs:
        mine = [s for modality, s in zip(staged, summaries, strict=True)
                if modality == run.modality]
        manifests[run.modality] = features.finish_encode(run, mine, retried=True)
        if run.modality in saved:
            tf.io.gfile.rmtree(saved[run.modality])
    return manifests
