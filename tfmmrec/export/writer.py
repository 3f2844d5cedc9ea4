"""Export: write ``<base>/<model_name>/<version>/`` atomically, with metadata TF Serving users need.

The SavedModel is written to a hidden temp directory beside the versions, fsynced and renamed
into place (``tfmmrec.files.atomic_path``),
so a server polling the base path never sees a half-written version (TF Serving only loads
directories named by an integer).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfmmrec.errors import ExportError, first_line
from tfmmrec.export.variables import VersionVariables, link_or_copy, split_checkpoint
from tfmmrec.files import (
    atomic_path,
    atomic_write,
    remove_stale_temps,
    temp_writer_gone,
    write_json,
)

logger = logging.getLogger(__name__)

METADATA_FILE = "tfmmrec.json"
# ``embed_item_content`` alone (module.ItemEmbedder), what catalogue updates load.
ITEM_EMBEDDER = "item_embedder"
# The user queries an approximate index's recall@10 was measured with, kept so that a
# catalogue update (which has no users to embed) measures its rebuilt index with the same ones.
RECALL_QUERIES = "recall_queries.npy"
_VERSION_DIR = re.compile(r"^[1-9][0-9]{0,17}$")  # int64 versions; no leading zeros
# Temp folders of an export in progress: ``.<version>.<pid>.<tag>.tmp`` (tfmmrec.files.
# atomic_path) and, from older releases, ``.tmp-<version>-<pid>-<time>``.
_TEMP_DIR = re.compile(r"^\.(?:[0-9]+\.(?P<pid>[0-9]+)\.(?P<tag>[0-9a-f]+)\.tmp"
                       r"|tmp-[0-9]+-(?P<old>[0-9]+)-.*)$")
# What a version must hold before it is renamed into place (a temp folder that another
# process removed mid-write would otherwise be recreated in part by the later saves).
_VERSION_FILES = ("saved_model.pb", "variables/variables.index", f"assets.extra/{METADATA_FILE}")


def list_versions(model_dir: str | os.PathLike) -> list[int]:
    """The integer version directories under a model's folder, ascending: the one scanner
    used by the writer, the loader and the server (TF Serving ignores every other name, so
    hidden temp folders being written are never seen). A missing folder has none."""
    try:
        entries = list(Path(model_dir).iterdir())
    except OSError:
        return []
    return sorted(int(p.name) for p in entries if is_version_name(p.name) and p.is_dir())


def is_version_name(name: str) -> bool:
    """Whether a folder named ``name`` is a version (an int64 number without leading zeros,
    as TF Serving reads them)."""
    return _VERSION_DIR.match(name) is not None


# The highest version tfmmrec has published under a model's folder: a rollback (the newest
# folder deleted, as TF Serving users roll back) must not give its number to the next export
# or catalogue update, or a client pinned to that version would get another catalogue under
# it. Hidden, so TF Serving and ``list_versions`` never take it for a version.
PUBLISHED_FILE = ".tfmmrec-published"
_WARNED_MARKS: set[tuple[str, str]] = set()  # (mark, its unreadable text) already warned of


def published_version(model_dir: str | os.PathLike) -> int:
    """The highest version recorded as published under ``model_dir`` (0: none recorded)."""
    mark = Path(model_dir) / PUBLISHED_FILE
    try:
        text = mark.read_text().strip()
    except OSError:
        return 0
    if is_version_name(text):
        return int(text)
    if (str(mark), text) not in _WARNED_MARKS:  # read several times per export: said once
        _WARNED_MARKS.add((str(mark), text))
        logger.warning("%s holds %r, not a version number: ignored (it is rewritten at the "
                       "next export or catalogue update)", mark, text[:40])
    return 0


def note_published(model_dir: str | os.PathLike, version: int = 0) -> int:
    """Raise the mark to ``version`` and to every version folder present (folders an older
    release exported, or one whose writer died before noting it); returns the mark. Under an
    exclusive lock of the folder, so two writers never lower it."""
    model_dir = Path(model_dir)
    mark = model_dir / PUBLISHED_FILE
    with _folder_lock(model_dir):
        remove_stale_temps(mark)  # a writer killed mid-write leaves its temp file
        recorded = published_version(model_dir)
        highest = max(recorded, version, max(list_versions(model_dir), default=0))
        if highest > recorded:
            atomic_write(mark, f"{highest}\n".encode())
    return highest


@contextlib.contextmanager
def _folder_lock(model_dir: Path):
    """An exclusive ``flock`` of ``model_dir`` itself (no lock file to leave behind), each call
    on its own descriptor, so threads of one process exclude each other as processes do. Where
    there is no ``fcntl`` (Windows), or the file system refuses locks (some NFS and FUSE
    mounts, where model stores often live), no lock: the mark is then only as safe as before."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    descriptor = os.open(model_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except OSError as exc:
            logger.debug("%s: no lock for the version mark (%s)", model_dir, exc)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def next_version(model_dir: str | os.PathLike) -> int:
    """One more than the highest version present or ever published (1 for a new model):
    numbers are never reused, also after a rollback."""
    return max(max(list_versions(model_dir), default=0), published_version(model_dir)) + 1


def remove_stale_temp_dirs(model_dir: str | os.PathLike) -> list[Path]:
    """Delete the temp folders of exports that were killed before their rename.

    A folder is stale when its writer, a process of this machine and PID namespace, no longer
    exists, or when it is older than a day (a writer in another container or on another machine
    sharing the folder, whose pid means nothing here: ``files.temp_writer_gone``); live
    writers are kept.
    """
    removed = []
    for path in Path(model_dir).glob(".*"):
        match = _TEMP_DIR.match(path.name)
        if match is None or not path.is_dir():
            continue
        if not temp_writer_gone(int(match["pid"] or match["old"]), match["tag"] or "", path):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
        logger.info("removed %s left by an interrupted export", path)
    return removed


def check_complete(version_dir: str | os.PathLike) -> None:
    """Refuse to publish a version folder that lacks what every version holds: its temp folder
    was removed while this export wrote it (by another process), and ``tf.saved_model.save``
    would have recreated only the parts written after that."""
    missing = missing_version_files(version_dir)
    if missing:
        raise ExportError(f"the export's temporary folder {version_dir} lost "
                          f"{', '.join(missing)} while it was being written (removed by "
                          "another process?); nothing was published: run it again")


def missing_version_files(version_dir: str | os.PathLike) -> list[str]:
    """What a version folder lacks of what every version holds (``saved_model.pb``…)."""
    return [name for name in _VERSION_FILES if not (Path(version_dir) / name).is_file()]


def check_version_free(model_dir: str | os.PathLike, version: int | None) -> None:
    """Refuse a chosen ``export.version`` that already exists, naming the versions present.

    Versions are immutable. Called before an export's work (index build, recall measurement)
    as well as just before writing, so the refusal costs nothing. ``None``: the next version,
    always free."""
    if not version:
        return
    final = Path(model_dir) / str(version)
    if final.exists():
        present = list_versions(model_dir)
        raise ExportError(
            f"export.version={version}: {final} already exists (versions present: "
            f"{', '.join(map(str, present)) or 'none'}); versions are immutable: choose "
            f"another export.version or leave it empty for the next one "
            f"({next_version(model_dir)})")
    if version <= (published := published_version(model_dir)):
        raise ExportError(
            f"export.version={version}: version {version} was published under {model_dir} "
            f"before and has been removed (the highest published: {published}, recorded in "
            f"{PUBLISHED_FILE}); a number is never reused, so a client pinned to it cannot "
            f"get another catalogue: choose a version above {published}, leave "
            f"export.version empty, or delete {model_dir / PUBLISHED_FILE} if this folder's "
            "numbers are yours to reuse (a copied model folder)")


def _new_version_dir(model_dir: Path, version: int | None) -> tuple[int, Path]:
    """The next version's number and directory (stale temp dirs of killed writes removed);
    an existing version is refused: versions are immutable."""
    remove_stale_temp_dirs(model_dir)
    note_published(model_dir)  # the folders present, if an older release exported them
    check_version_free(model_dir, version)
    version = version or next_version(model_dir)
    return version, model_dir / str(version)


def _write_failed(final: Path, version: int, exc: Exception) -> ExportError:
    """The error of a write that failed. Losing a race (another writer renamed its version
    ``version`` into place between our choice of the number and our rename) is said as such:
    the temp folder is already removed, so this run changed nothing and a retry builds on the
    winner's version."""
    lost = (isinstance(exc, tf.errors.AlreadyExistsError)
            or (isinstance(exc, OSError) and exc.errno in (errno.EEXIST, errno.ENOTEMPTY)
                and Path(final).is_dir()))
    if lost:
        return lost_race_error(version, final)
    return ExportError(f"export to {final} failed: {exc}")


def lost_race_error(version: int, final: Path) -> ExportError:
    return ExportError(f"another writer published version {version} ({final}) first; "
                       "nothing was changed by this run: run it again (a catalogue update "
                       f"then builds on version {version})")


def write_version(module: tf.Module, base_dir: str | os.PathLike, model_name: str,
                 version: int | None, metadata: dict, uses_scann: bool,
                 warmup: dict | None = None, recall_queries: np.ndarray | None = None) -> Path:
    """Save ``module`` with its signatures as a new version; returns the version directory."""
    model_dir = Path(base_dir) / model_name
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create export directory {model_dir}: {exc}") from None
    version, final = _new_version_dir(model_dir, version)
    # Custom-op namespaces the graph may hold: KerasNLP's in-graph tokenizer (TFText) and ScaNN.
    options = tf.saved_model.SaveOptions(namespace_whitelist=["TFText", "Scann"])
    try:
        with atomic_path(final, directory=True) as tmp:
            tf.saved_model.save(module, tmp, signatures=module.signatures(), options=options)
            if hasattr(module, "towers"):  # the two shards catalogue updates reuse
                split_checkpoint(tmp)
                _write_fingerprint(tmp)
            _write_extra(Path(tmp), model_name, version, metadata, uses_scann, warmup,
                         recall_queries)
            if hasattr(getattr(module, "towers", None), "embed_item_content"):
                from tfmmrec.export.module import ItemEmbedder

                tf.saved_model.save(ItemEmbedder(module.towers),
                                    str(Path(tmp) / "assets.extra" / ITEM_EMBEDDER),
                                    options=options)
            check_complete(tmp)
            note_published(model_dir, version)  # before the rename: a crash skips a number
    except ExportError:
        raise
    except Exception as exc:
        raise _write_failed(final, version, exc) from exc
    logger.debug("exported %s", final)
    return final


def write_updated_version(previous: str | os.PathLike, module: tf.Module,
                          base_dir: str | os.PathLike, model_name: str, version: int | None,
                          metadata: dict, uses_scann: bool, warmup: dict | None = None,
                          recall_queries: np.ndarray | None = None) -> Path | None:
    """Write ``module`` as a new version *without tracing it*: ``previous``'s graph
    (``saved_model.pb``), assets and towers' variables, with ``module``'s catalogue variables
    (:mod:`tfmmrec.export.variables`) in a new checkpoint. Valid only when ``module`` traces to
    ``previous``'s graph (the caller compares ``graph_constants``); returns ``None``, writing
    nothing, when its variables are not laid out like ``previous``'s. Atomic like
    :func:`write_version`; TF's fingerprint of the files is recomputed for the new checkpoint.
    """
    previous = Path(previous)
    variables = VersionVariables(previous)
    replaced = variables.catalog_values(module)
    if replaced is None:
        logger.info("%s: catalogue variables laid out differently; saving in full", previous)
        return None
    model_dir = Path(base_dir) / model_name
    version, final = _new_version_dir(model_dir, version)
    try:
        with atomic_path(final, directory=True) as tmp:
            Path(tmp).mkdir()
            shutil.copy2(previous / "saved_model.pb", Path(tmp) / "saved_model.pb")
            if (previous / "assets").is_dir():
                shutil.copytree(previous / "assets", Path(tmp) / "assets")
            variables.write(tmp, replaced)
            embedder = previous / "assets.extra" / ITEM_EMBEDDER
            if embedder.is_dir():  # unchanged by catalogue updates; versions are immutable
                shutil.copytree(embedder, Path(tmp) / "assets.extra" / ITEM_EMBEDDER,
                                copy_function=link_or_copy)
            _write_fingerprint(tmp)
            _write_extra(Path(tmp), model_name, version, metadata, uses_scann, warmup,
                         recall_queries)
            check_complete(tmp)
            note_published(model_dir, version)  # before the rename: a crash skips a number
    except ExportError:
        raise
    except Exception as exc:
        raise _write_failed(final, version, exc) from exc
    logger.debug("exported %s (graph of %s, new catalogue variables)", final, previous.name)
    return final


def _write_fingerprint(version_dir) -> None:
    """TF's ``fingerprint.pb`` of the files as they are (its checkpoint hash covers
    ``variables.index``, which the checkpoint split and every update rewrite)."""
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

    fingerprint = fingerprinting.CreateFingerprintDef(os.fspath(version_dir))
    with tf.io.gfile.GFile(os.path.join(os.fspath(version_dir), "fingerprint.pb"), "wb") as f:
        f.write(fingerprint)


def _write_extra(version_dir: Path, model_name: str, version: int, metadata: dict,
                 uses_scann: bool, warmup: dict | None,
                 recall_queries: np.ndarray | None = None) -> None:
    """``assets.extra``: tfmmrec's metadata, TF Serving's warmup requests and the index's
    recall queries (``RECALL_QUERIES``)."""
    extra = version_dir / "assets.extra"
    extra.mkdir(parents=True, exist_ok=True)
    payload = {**metadata, "version": version, "requires_scann_ops": uses_scann}
    write_json(payload, extra / METADATA_FILE)
    if recall_queries is not None:  # inside the version's temp folder: renamed with it
        np.save(extra / RECALL_QUERIES, np.asarray(recall_queries, np.float32))
    if warmup is not None:
        from tfmmrec.export.warmup import write_warmup_requests

        write_warmup_requests(extra, model_name, warmup)


def stored_recall_queries(version_dir: str | os.PathLike) -> np.ndarray | None:
    """The recall queries ``version_dir`` was measured with (``None``: none kept, e.g. an
    exact index or an export from before they were kept, or an unreadable file)."""
    path = Path(version_dir) / "assets.extra" / RECALL_QUERIES
    if not path.is_file():
        return None
    try:
        queries = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        logger.warning("%s is damaged (%s): no index recall for this update", path,
                       first_line(exc))
        return None
    return queries if queries.ndim == 2 and queries.dtype == np.float32 else None


def read_metadata(version_dir: str | os.PathLike) -> dict:
    path = Path(version_dir) / "assets.extra" / METADATA_FILE
    if not path.is_file():
        raise ExportError(f"{version_dir} is not a tfmmrec export (no {path.name})")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are both
        raise ExportError(f"{path} is damaged ({first_line(exc)}): export this version again, "
                          "or remove it so that the one before it is served") from None
    if not isinstance(metadata, dict):
        raise ExportError(f"{path} is damaged (a JSON {type(metadata).__name__}, not an "
                          "object): export this version again, or remove it")
    return metadata


def write_models_config(base_dir: str | os.PathLike) -> Path:
    """``<base>/models.config``: every exported model under ``base_dir`` as a ModelServerConfig
    text proto (absolute local paths; for Docker see serving/models.config with /models/...)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    base = Path(base_dir).resolve()
    config = model_server_config_pb2.ModelServerConfig()
    for model_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        if list_versions(model_dir):
            entry = config.model_config_list.config.add()
            entry.name, entry.base_path = model_dir.name, str(model_dir)
            entry.model_platform = "tensorflow"
    return atomic_write(base / "models.config", text_format.MessageToString(config))
