"""Towers: the catalogue's frozen-encoder features as sharded TFRecords (``tfmmrec encode``).

``tfmmrec encode`` writes one directory per encoder under its output (local, or any TensorFlow
filesystem path such as ``gs://bucket/features``)::

    <modality>-<identity>/              identity: the encoder's settings + weights hash
        plan.json                       what this run writes (a re-run keeps finished shards)
        features-00000-of-00004.tfrecord  one record per item in catalogue order: item_index,
                                        item_id, key (the content hash the local cache uses),
                                        ok (content present and decoded), feature (float32 bytes)
        manifest.json                   written last: a directory without it is never read

Shards are encoded one at a time by :func:`encode_shard` — in this process (``tfmmrec encode``)
or on Beam workers (``tfmmrec encode --runner``, ``tfmmrec.beam.encode``) — so memory is one
batch whatever the catalogue size. With ``train.features`` set, ``pipeline.prepare`` reads the
features from here (:func:`load_features`) instead of encoding the catalogue: training,
evaluation and export never run the frozen encoders over the catalogue again.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from tfmmrec import modalities
from tfmmrec.config import Config
from tfmmrec.data import tfrecords
from tfmmrec.data.dataset import Dataset
from tfmmrec.data.stream import ItemsStream, summarize
from tfmmrec.data.tfrecords import join_path, read_json, write_text
from tfmmrec.data.validate import report_missing_media
from tfmmrec.errors import ConfigError, DataError, MediaDecodeError, first_line
from tfmmrec.files import atomic_path
from tfmmrec.progress import counter
from tfmmrec.towers.cache import CacheStats, ModalityContent, compiled
from tfmmrec.towers.encoders import Encoder, build_encoder

logger = logging.getLogger(__name__)

# 2: catalog_sha1 is hashed per modality (``tfrecords.CatalogDigest``), so it can be streamed
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
PLAN = "plan.json"
# a shard and its sidecar of counts (``encode_shard``)
SHARD_PATTERNS = ("features-*-of-*.tfrecord", "features-*-of-*.json")
TARGET_SHARD_BYTES = 64 * 2**20
MAX_SHARD_ITEMS = 50_000
Encode = Callable[[Any], np.ndarray]


@dataclass
class FeaturesManifest:
    """A finished features directory of one encoder."""

    directory: str
    format_version: int
    modality: str
    identity: str
    feature_dim: int
    num_items: int
    item_ids_sha1: str
    catalog_sha1: str
    source: str
    encoded: int
    failed: int
    shards: list[dict[str, Any]] = field(default_factory=list)
    # the dataset folder encoded and its items' content wherever it lies ("" before)
    root: str = ""
    content_sha1: str = ""

    def files(self) -> list[str]:
        return [join_path(self.directory, s["file"]) for s in self.shards]

    def to_dict(self) -> dict[str, Any]:
        payload = dataclasses.asdict(self)
        payload.pop("directory")
        return payload


@dataclass
class EncodeRun:
    """One encoder's ``encode`` of the catalogue: its directory, every shard (``file``,
    ``records``), those still to write, and how to build their jobs.

    ``todo_jobs()`` builds each job (its items' ids and content, or its item-shard file) only
    when it is consumed, so planning holds no item: a streamed catalogue is read again, shard
    by shard, while the jobs are run or staged.
    """

    modality: str
    encoder: Encoder
    directory: str
    plan: dict[str, Any]
    jobs: list[dict[str, Any]]
    todo: list[dict[str, Any]]
    make_jobs: Callable[[set[str]], Iterator[dict[str, Any]]] = field(repr=False)
    # where the shards are written: ``directory``, or its ``.replacement`` folder while
    # finished features of another plan stay readable there (``tfrecords.output_workdir``)
    workdir: str = ""

    def __post_init__(self) -> None:
        self.workdir = self.workdir or self.directory

    def todo_jobs(self) -> Iterator[dict[str, Any]]:
        """The full job of every shard in ``todo``, in order."""
        return self.make_jobs({job["file"] for job in self.todo})


def features_dir(root: str, modality: str, identity: str) -> str:
    return join_path(str(root), f"{modality}-{identity}")


def frozen_encoders(config: Config, dataset: Dataset | ItemsStream) -> dict[str, Encoder]:
    """The encoders ``pipeline.prepare`` would build and cache (enabled and frozen), by modality.

    From a stream, an encoder that needs the corpus (a vocabulary) reads it from the table.
    """
    catalog = dataset.catalog if isinstance(dataset, Dataset) else dataset
    encoders = {}
    for modality in catalog.modalities:
        tower = config.tower(modality)
        if not tower.enabled:
            continue
        if tower.trainable:
            logger.info("%s encoder is fine-tuned (%s.trainable): it has no fixed features to "
                        "precompute; skipped", modality, modality)
            continue
        corpus = catalog.values(modality)
        if isinstance(dataset, Dataset):
            corpus = list(corpus)
        encoders[modality] = build_encoder(modality, tower, corpus)
    return encoders


# --- planning (shared by the local and Beam paths) --------------------------------------------


def plan_encode(config: Config, dataset: Dataset | ItemsStream, encoder: Encoder, output: str,
                *, shards: int | None = None, workers: int = 1) -> EncodeRun:
    """Shard jobs for one encoder; finished shards of the same plan are kept (resume).

    Items come from ``train.tfrecords`` when it is set (pre-decoded, one job per item shard),
    else from the dataset folder (decoded by the functions the local cache uses).
    """
    summary = summarize(dataset)
    modality, identity = encoder.modality, encoder.identity()
    directory = features_dir(output, modality, identity)
    settings = {**modalities.settings_from_config(config),
                "batch_size": config.train.encode_batch_size}
    # a Beam worker registers the modalities the plan was made with
    common = {"modality": modality, "output": directory, "settings": settings,
              "modalities": modalities.references()}
    source = config.train.tfrecords or ""
    plan = {"modality": modality, "identity": identity, "feature_dim": encoder.feature_dim,
            "num_items": summary.num_items, "item_ids_sha1": summary.item_ids_sha1,
            "catalog_sha1": summary.catalog_sha1, **_relocatable(summary),
            "source": source or str(summary.root), "settings": settings}
    if source:
        manifest = tfrecords.load_manifest(source)
        tfrecords.check_compatible(manifest, config, summary)
        base = manifest.to_dict()
        full = [{"file": shard_name(n, len(manifest.shards["items"])),
                 "records": shard["records"],
                 "items_manifest": {**base, "directory": source,
                                    "shards": {**base["shards"], "items": [shard]}}, **common}
                for n, shard in enumerate(manifest.shards["items"])]
        jobs = [{"file": job["file"], "records": job["records"]} for job in full]

        def make_jobs(todo: set[str]) -> Iterator[dict[str, Any]]:
            return ({**job, "output": common["output"]} for job in full if job["file"] in todo)
    else:
        count = shards or _previous_count(directory, plan) or _shard_count(
            summary.num_items, encoder.feature_dim, workers)
        sizes = _shard_sizes(summary.num_items, count)
        jobs = [{"file": shard_name(n, len(sizes)), "records": size}
                for n, size in enumerate(sizes)]

        def make_jobs(todo: set[str]) -> Iterator[dict[str, Any]]:
            return _folder_jobs(_item_rows(dataset, modality), jobs, todo, common)
    plan["shards"] = [job["file"] for job in jobs]
    plan["fingerprint"] = _fingerprint(plan)
    _make_directory(directory)
    workdir = tfrecords.output_workdir(directory, plan["fingerprint"], "features",
                                       SHARD_PATTERNS)
    tfrecords.start_or_resume(workdir, plan, SHARD_PATTERNS, "features")
    common["output"] = workdir  # the jobs write there
    todo = [job for job in jobs if not _finished_shard(workdir, job)]
    if len(todo) < len(jobs):
        logger.info("%s: %d of %d shards already encoded, resuming", workdir,
                    len(jobs) - len(todo), len(jobs))
    return EncodeRun(modality, encoder, directory, plan, jobs, todo, make_jobs, workdir)


def shard_name(shard: int, count: int) -> str:
    return f"features-{shard:05d}-of-{count:05d}.tfrecord"


def _relocatable(summary) -> dict[str, str]:
    """Where the items were read and their content wherever that folder lies
    (``CatalogDigest.content``): what lets a moved dataset folder use its features."""
    return {"root": str(Path(summary.root).absolute()), "content_sha1": summary.content_sha1}


def _fingerprint(plan: dict[str, Any]) -> str:
    """The plan's identity. ``root`` and ``content_sha1`` stay out: ``source`` and
    ``catalog_sha1`` already say the same, and plans written before them keep theirs."""
    plan = {key: value for key, value in plan.items()
            if key not in ("fingerprint", "root", "content_sha1")}
    return hashlib.sha1(json.dumps([FORMAT_VERSION, plan], sort_keys=True).encode()).hexdigest()


def _previous_count(directory: str, plan: dict[str, Any]) -> int | None:
    """The shard count of an earlier plan of this content, encoder and settings (in
    ``directory`` or its replacement): the default count follows the workers (1 locally, the
    cores under ``--runner``), which is not content, so its finished shards are kept."""
    for folder in (directory, join_path(directory, tfrecords.REPLACEMENT)):
        path = join_path(folder, PLAN)
        old = (read_json(path) if tf.io.gfile.exists(path) else None) or {}
        names = old.get("shards")
        if names and old.get("fingerprint") == _fingerprint({**plan, "shards": names}):
            return len(names)
    return None


def _shard_count(num_items: int, feature_dim: int, workers: int) -> int:
    """The default shard count: one per worker at least, and bounded shards. A job carries its
    items' ids and content: bounded, so a worker's memory does not grow with the catalogue."""
    return max(workers, math.ceil(num_items * (4 * feature_dim + 96) / TARGET_SHARD_BYTES),
               math.ceil(num_items / MAX_SHARD_ITEMS))


def _shard_sizes(num_items: int, count: int) -> list[int]:
    """Items per shard, as ``np.array_split`` of the catalogue would cut it."""
    count = max(1, min(count, num_items))
    size, extra = divmod(num_items, count)
    return [size + (shard < extra) for shard in range(count)]


def _item_rows(dataset: Dataset | ItemsStream, modality: str) -> Iterator[tuple[int, str, Any]]:
    if isinstance(dataset, ItemsStream):
        return dataset.rows_of(modality)
    catalog = dataset.catalog
    return ((i, str(item_id), value) for i, (item_id, value) in enumerate(
        zip(catalog.item_ids, catalog.values(modality), strict=True)))


def _folder_jobs(rows: Iterator[tuple[int, str, Any]], shards: list[dict[str, Any]],
                 todo: set[str], common: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The job of each shard in ``todo``, built from the next ``records`` rows (one shard's
    items in memory at a time)."""
    spec = modalities.get(common["modality"])
    for shard in shards:
        chunk = itertools.islice(rows, shard["records"])
        if shard["file"] not in todo:
            collections.deque(chunk, maxlen=0)  # skip a finished shard's rows
            continue
        items = [(int(i), item_id, spec.job_value(value)) for i, item_id, value in chunk]
        if len(items) != shard["records"]:
            raise DataError(f"the items table changed while it was read ({len(items)} rows "
                            f"for {shard['file']}, planned {shard['records']}); run again")
        yield {**shard, "items": items, **common}


def _make_directory(directory: str) -> None:
    try:
        tf.io.gfile.makedirs(directory)
    except (tf.errors.OpError, OSError) as exc:
        raise DataError(f"cannot write features to {directory}: {exc}. Choose a writable "
                        "directory (--output or train.features)") from None


def finish_encode(run: EncodeRun, summaries: list[dict[str, Any]], *,
                  retried: bool = False) -> FeaturesManifest:
    """Check every shard exists with its recorded size, report undecodable media, write
    ``manifest.json`` last (each shard's records, size and SHA-256). ``retried``: a runner
    may have run a job twice (Beam), so each shard written is hashed again
    (:func:`_record_standing_shard`); one process's shard and summary always agree."""
    recorded = {job["file"]: _sidecar(run.workdir, job["file"]) for job in run.jobs}
    written = {summary["file"] for summary in summaries} if retried else set()
    for job in run.jobs:
        if job["file"] in written and recorded[job["file"]] is not None:
            recorded[job["file"]] = _record_standing_shard(run.workdir, job,
                                                           recorded[job["file"]])
    missing = [job["file"] for job in run.jobs
               if not tfrecords.shard_matches(join_path(run.workdir, job["file"]),
                                              job["records"], recorded[job["file"]],
                                              checksum=False)]
    if missing:
        raise DataError(f"{run.workdir}: {len(missing)} feature shard(s) were not written "
                        f"(first: {missing[0]}); run `tfmmrec encode` again (finished shards "
                        "are kept)")
    failed = [path for s in summaries for path in s["failed"]]
    report_missing_media(run.modality, failed)
    previous = _previous_counts(run.workdir)
    for summary in summaries:
        previous[summary["file"]] = (summary["encoded"], len(summary["failed"]))
    plan = run.plan
    manifest = FeaturesManifest(
        directory=run.directory, format_version=FORMAT_VERSION, modality=run.modality,
        identity=plan["identity"], feature_dim=plan["feature_dim"], num_items=plan["num_items"],
        item_ids_sha1=plan["item_ids_sha1"], catalog_sha1=plan["catalog_sha1"],
        source=plan["source"], encoded=sum(e for e, _ in previous.values()),
        failed=sum(f for _, f in previous.values()),
        shards=[tfrecords.shard_entry(recorded[job["file"]]) for job in run.jobs],
        root=plan.get("root", ""), content_sha1=plan.get("content_sha1", ""))
    shards = [job["file"] for job in run.jobs]
    sidecars = [name for name in (f[: -len(".tfrecord")] + ".json" for f in shards)
                if tf.io.gfile.exists(join_path(run.workdir, name))]
    tfrecords.swap_in(run.directory, run.workdir, shards + sidecars, SHARD_PATTERNS)
    write_text(join_path(run.directory, MANIFEST), json.dumps(manifest.to_dict(), indent=2))
    logger.info("encoded %s: %d of %d items have %s features (%d-d) in %d shards",
                run.directory, manifest.encoded, manifest.num_items, run.modality,
                manifest.feature_dim, len(run.jobs))
    return manifest


def _damaged(files: list[str]) -> str | None:
    """The first of ``files`` that does not read as TFRecords (the error path only)."""
    for file in files:
        try:
            for _ in tf.data.TFRecordDataset(file):
                pass
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
            return file
    return None


def _sidecar_path(directory: str, shard: str) -> str:
    return join_path(directory, shard[: -len(".tfrecord")] + ".json")


def _sidecar(directory: str, shard: str) -> dict[str, Any] | None:
    """A shard's summary (``{"file", "records", "bytes", "sha256", "encoded", "failed"}``),
    None if missing or damaged."""
    path = _sidecar_path(directory, shard)
    summary = read_json(path) if tf.io.gfile.exists(path) else None
    return summary if isinstance(summary, dict) and summary.get("file") == shard else None


def _finished_shard(directory: str, job: dict[str, Any]) -> bool:
    """A shard a resumed run keeps: it exists with its summary (written before it), and has
    the records, size and SHA-256 the summary recorded (``prepare``'s check,
    ``tfrecords.shard_matches``). A shard damaged since, or whose summary is damaged, is
    encoded again; one whose summary predates sizes is kept if its records read back intact
    (TFRecord CRCs), and its size and SHA-256 recorded."""
    path, summary = join_path(directory, job["file"]), _sidecar(directory, job["file"])
    if summary is None or not tf.io.gfile.exists(path):
        return False
    if "sha256" not in summary and tfrecords.records_intact(path, job["records"]):
        summary.update(tfrecords.shard_record(job["file"], job["records"], path))
        write_text(_sidecar_path(directory, job["file"]), json.dumps(summary))
        return True
    if tfrecords.shard_matches(path, job["records"], summary, checksum=True):
        return True
    logger.warning("%s is damaged (its size, checksum or records are not the ones written); "
                   "encoding it again", path)
    return False


def _record_standing_shard(directory: str, job: dict[str, Any],
                           summary: dict[str, Any]) -> dict[str, Any]:
    """A shard written by this run, checked against its summary's SHA-256. A runner that ran
    a job twice (a Beam retry) may leave one attempt's summary beside the other's shard, equal
    in size but not in bytes if the encoder's float rounding differs between machines; the
    shard that stands is recorded, if its records read back intact."""
    path = join_path(directory, job["file"])
    if tfrecords.shard_matches(path, job["records"], summary, checksum=True) \
            or not tfrecords.records_intact(path, job["records"]):
        return summary
    summary = {**summary, **tfrecords.shard_record(job["file"], job["records"], path)}
    write_text(_sidecar_path(directory, job["file"]), json.dumps(summary))
    return summary


def _previous_counts(directory: str) -> dict[str, tuple[int, int]]:
    """Per-shard (encoded, failed) counts of shards a resumed run kept, from their sidecars."""
    counts = {}
    for path in tf.io.gfile.glob(join_path(directory, "features-*.json")):
        shard = path.rpartition("/")[2][: -len(".json")] + ".tfrecord"
        summary = _sidecar(directory, shard)
        if summary is not None:
            counts[shard] = (summary["encoded"], len(summary["failed"]))
    return counts


# --- one shard (the unit of work of both paths) -----------------------------------------------


def encode_shard(job: dict[str, Any], encode: Encode) -> dict[str, Any]:
    """Encode one shard's items with ``encode`` (raw batch → ``[B, D]``) and write its records
    under a temporary name, renamed into place when complete; returns the shard's summary."""
    modalities.require(job.get("modalities", ()))
    final = join_path(job["output"], job["file"])
    failed: list[str] = []
    encoded = 0
    batches = (_tfrecord_batches if "items_manifest" in job else _folder_batches)(job, failed)
    with atomic_path(final) as tmp:
        with tf.io.TFRecordWriter(tmp) as writer:
            for index, item_ids, keys, good, raw in batches:
                features = np.asarray(encode(raw), np.float32) if good else np.zeros((0, 0))
                if len(features) != len(good):
                    raise DataError(f"encoder returned {len(features)} features for "
                                    f"{len(good)} items ({final})")
                rows = dict(zip(good, features, strict=True))
                for row, item in enumerate(index):
                    feature = rows.get(row)
                    example = tf.train.Example(features=tf.train.Features(feature={
                        "item_index": _int(item), "item_id": _bytes(item_ids[row].encode()),
                        "key": _bytes(keys[row].encode()), "ok": _int(feature is not None),
                        "feature": _bytes(b"" if feature is None
                                          else feature.astype("<f4").tobytes())}))
                    writer.write(example.SerializeToString(deterministic=True))
                encoded += len(good)
        # with the shard's size and SHA-256, as prepare's sidecars: a resumed run rewrites a
        # shard damaged since (``_finished_shard``)
        summary = {**tfrecords.shard_record(job["file"], job["records"], tmp),
                   "encoded": encoded, "failed": failed}
        # The sidecar first: a shard that exists always has its counts (for a resumed manifest).
        write_text(_sidecar_path(job["output"], job["file"]), json.dumps(summary))
    return summary


Batch = tuple[list[int], list[str], list[str], list[int], Any]


def _folder_batches(job: dict[str, Any], failed: list[str]) -> Iterator[Batch]:
    """Raw batches decoded from the folder exactly as ``towers.cache.raw_loader`` does."""
    spec, settings = modalities.get(job["modality"]), job["settings"]
    items = job["items"]
    for start in range(0, len(items), settings["batch_size"]):
        chunk = items[start:start + settings["batch_size"]]
        keys, good, arrays = [], [], []
        for row, (_, _, content) in enumerate(chunk):
            key = ""
            if content:
                try:
                    key = spec.content_key(content)
                    arrays.append(spec.load(content, settings))
                    good.append(row)
                except (MediaDecodeError, OSError) as exc:
                    logger.debug("%s", exc)
                    failed.append(content)
            keys.append(key)
        raw = spec.batch(arrays) if good else None
        yield ([i for i, _, _ in chunk], [str(item_id) for _, item_id, _ in chunk], keys,
               good, raw)


def _tfrecord_batches(job: dict[str, Any], failed: list[str]) -> Iterator[Batch]:
    """Raw batches from one pre-decoded item shard, as ``cache.encode_records`` reads them;
    an item whose file did not decode when the shards were prepared (a content key, not
    present) is counted in ``failed`` as the folder path counts it (it was 0 here)."""
    modality = job["modality"]
    manifest = tfrecords.Manifest.from_dict(job["items_manifest"])
    for batch in tfrecords.items_dataset(manifest, job["settings"]["batch_size"]):
        keys = [k.decode() for k in batch[f"{modality}_key"].numpy()]
        present = batch[f"{modality}_present"].numpy()
        item_ids = [i.decode() for i in batch["item_id"].numpy()]
        good = [row for row, key in enumerate(keys) if key and present[row]]
        failed.extend(f"item {item_ids[row]} (undecodable when prepared)"
                      for row, key in enumerate(keys) if key and not present[row])
        raw = encoder_rows(batch[modality], good, modality) if good else None
        yield [int(i) for i in batch["item_index"].numpy()], item_ids, keys, good, raw


def encoder_rows(content, rows: list[int], modality: str):
    """The encoder-ready batch of ``rows`` (``ModalitySpec.gather``: audio is trimmed to its
    longest clip, as the folder path pads)."""
    return modalities.get(modality).gather(content, rows)


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


# --- the local path -----------------------------------------------------------------------------


def encode(config: Config, output: str | os.PathLike | None = None, *,
           dataset: Dataset | None = None, shards: int | None = None,
           progress: bool = True) -> dict[str, FeaturesManifest]:
    """Every frozen encoder's features of the whole catalogue, in this process, shard by shard.

    ``output`` defaults to ``train.features``. Re-running after an interruption keeps the
    finished shards; a changed encoder writes a new ``<modality>-<identity>`` directory.
    """
    output, dataset = resolve_output(config, output, dataset)
    manifests = {}
    for modality, encoder in frozen_encoders(config, dataset).items():
        run = plan_encode(config, dataset, encoder, output, shards=shards)
        bar = counter(total=sum(job["records"] for job in run.todo), unit="item",
                      desc=f"encoding {modality}", disable=not progress or not run.todo)
        # one traced graph, as the feature cache and the Beam workers' SavedModels run it:
        # eagerly, Keras's per-call overhead cost this path 2.6x the CPU of the Beam job
        batches = sum(math.ceil(job["records"] / config.train.encode_batch_size)
                      for job in run.todo)
        encode_batch = compiled(encoder, batches)
        summaries = []
        try:
            for job in run.todo_jobs():
                summaries.append(encode_shard(job, lambda raw, f=encode_batch: np.asarray(f(raw))))
                bar.update(job["records"])
        finally:
            bar.close()
        manifests[modality] = finish_encode(run, summaries)
    return manifests


def resolve_output(config: Config, output, dataset: Dataset | ItemsStream | None
                   ) -> tuple[str, Dataset | ItemsStream]:
    """The output directory, and the catalogue: ``dataset`` if given, else the configured
    folder's items table streamed in chunks (memory independent of the catalogue size)."""
    output = str(output or config.train.features or "")
    if not output:
        raise ConfigError("tfmmrec encode needs an output directory: --output DIR or "
                          "train.features=DIR")
    if dataset is None:
        dataset = ItemsStream(config.data)
    return output, dataset


# --- reading (training, evaluation, export) -----------------------------------------------------


def _catalogue_difference(manifest: FeaturesManifest, dataset: Dataset) -> str:
    """What differs between the encoded catalogue and ``dataset``'s ("" if nothing): the item
    count, the ids, or the texts and media. In the folder encoded, media files are compared by
    size and modification time; a folder moved or copied elsewhere (other times) is compared
    by each file's path inside it and size, as prepared shards are."""
    catalog = dataset.catalog
    if manifest.num_items != len(catalog):
        return f"{manifest.num_items} items; the dataset has {len(catalog)}"
    if manifest.item_ids_sha1 != tfrecords.ids_digest(catalog.item_ids):
        return f"{len(catalog)} items both, but other ids or another order"
    if manifest.catalog_sha1 == tfrecords.catalog_fingerprint(catalog):
        return ""
    root = str(Path(dataset.root).absolute())
    if manifest.content_sha1 and manifest.root and manifest.root != root:
        if manifest.content_sha1 == tfrecords.CatalogDigest(root).update(catalog).content():
            logger.info("%s: features encoded from %s, read for the same items in %s",
                        manifest.directory, manifest.root, root)
            return ""
        return (f"the same {len(catalog)} ids, but other texts or media files than the "
                f"folder encoded ({manifest.root}); media are compared by their path in the "
                "folder and size")
    return (f"the same {len(catalog)} ids, but other texts or media files; media are "
            "compared by size and modification time, so a file rewritten since counts as "
            "changed")


def load_features(directory: str | os.PathLike, encoder: Encoder, dataset: Dataset
                  ) -> tuple[ModalityContent, CacheStats]:
    """This encoder's features of every item from a finished ``tfmmrec encode`` directory.

    Refused (``DataError``) unless they were computed by exactly this encoder (settings and
    weights) from this catalogue (ids, texts, media files' size and modification time; in a
    dataset folder moved or copied since, each file's path in it and size).
    """
    root, modality, identity = str(directory), encoder.modality, encoder.identity()
    path = features_dir(root, modality, identity)
    again = f"run `tfmmrec encode` with this config (--output {root})"
    if not tf.io.gfile.exists(join_path(path, MANIFEST)):
        if tf.io.gfile.isdir(path):
            raise DataError(f"{path} exists, but its `tfmmrec encode` did not finish (no "
                            f"{MANIFEST}): {again} to finish it (finished shards are kept)")
        found = sorted(name.rstrip("/") for name in tf.io.gfile.listdir(root)
                       if name.startswith(f"{modality}-")) if tf.io.gfile.isdir(root) else []
        raise DataError(f"train.features={root} holds no finished {modality} features of this "
                        f"{modality} encoder ({modality}-{identity}; found: "
                        f"{', '.join(found) or 'none'}): {again}")
    payload = read_json(join_path(path, MANIFEST), again)
    if payload.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: features format {payload.get('format_version')} is not "
                        f"{FORMAT_VERSION}: {again}")
    manifest = FeaturesManifest(directory=path, **payload)
    catalog = dataset.catalog
    difference = _catalogue_difference(manifest, dataset)
    if difference:
        raise DataError(f"{path} was encoded from another catalogue ({difference}): {again}")
    files = manifest.files()
    missing = [f for f in files if not tf.io.gfile.exists(f)]
    if missing:
        raise DataError(f"{path}: {len(missing)} shard(s) listed in {MANIFEST} are missing "
                        f"(first: {missing[0]}): {again}")
    values = np.zeros((len(catalog), manifest.feature_dim), np.float32)
    mask = np.zeros(len(catalog), bool)
    spec = {"item_index": tf.io.FixedLenFeature([], tf.int64),
            "ok": tf.io.FixedLenFeature([], tf.int64),
            "feature": tf.io.FixedLenFeature([], tf.string)}
    width = 4 * manifest.feature_dim

    def parse(serialized):
        x = tf.io.parse_example(serialized, spec)
        return x["item_index"], x["ok"] > 0, tf.io.decode_raw(x["feature"], tf.float32,
                                                              fixed_length=width)

    records = (tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)
               .batch(4096).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
               .prefetch(tf.data.AUTOTUNE))
    seen = 0
    try:
        for index, ok, feature in records.as_numpy_iterator():
            values[index[ok]] = feature[ok]
            mask[index] = ok
            seen += len(index)
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as exc:
        raise DataError(f"{_damaged(files) or path}: a feature shard is damaged "
                        f"({first_line(exc)}): delete it and {again} (finished shards are "
                        "kept)") from None
    if seen != len(catalog):
        raise DataError(f"{path} holds {seen} records for {len(catalog)} items: {again}")
    logger.info("%s features of %d items read from %s (%d without %s)", modality,
                int(mask.sum()), path, int((~mask).sum()), modality)
    return ModalityContent(values, mask), CacheStats(reused=int(mask.sum()), computed=0)
