"""The one way tfmmrec writes a file: through a temporary sibling, fsynced, then renamed into place.

A reader (TF Serving polling a model directory, a dashboard, a resumed run, a second process)
never sees a half-written file: it sees the old content or the new, never a mix, and a crash
leaves at most a hidden ``.name.*.tmp`` beside it. JSON is strict (``allow_nan=False``): numpy
values, paths and dataclasses are converted, and NaN/inf become ``null`` explicitly, so no file
ever holds the non-standard ``NaN`` token that strict readers (browsers, ``jq``) reject.

Paths with a scheme (``gs://…``) go through ``tf.io.gfile``: object stores publish an object
only once its upload completes, which is the same guarantee without a local fsync.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import socket
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

Writer = Callable[[IO[bytes]], Any]


def atomic_write(path: str | os.PathLike, content: bytes | str | Writer) -> Path | str:
    """Write ``content`` (bytes, text as UTF-8, or a function writing to a binary handle) to
    ``path`` atomically; parent directories are created. Returns the path.

    On any failure the temporary file is removed and an existing ``path`` is left untouched.
    """
    if isinstance(content, str):
        content = content.encode("utf-8")
    write: Writer = content if callable(content) else (lambda f, data=content: f.write(data))
    if _is_device_or_pipe(path):  # a rename would replace /dev/null itself (as root)
        with open(path, "wb") as handle:
            write(handle)
        return Path(path)
    with atomic_path(path) as tmp:
        if _is_remote(tmp):
            import tensorflow as tf

            with tf.io.gfile.GFile(tmp, "wb") as handle:
                write(handle)
        else:
            with open(tmp, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
    return path if _is_remote(os.fspath(path)) else Path(path)


def _is_device_or_pipe(path: str | os.PathLike) -> bool:
    """``path`` is a local device, FIFO or socket (``/dev/null``, ``/dev/stdout``, a named
    pipe): written in place, since nobody reads it as a file that could be half-written."""
    if _is_remote(os.fspath(path)):
        return False
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, directory: bool = False,
                replace: bool = False) -> Iterator[str]:
    """A temporary sibling of ``path`` to write (a file, or with ``directory=True`` a whole
    directory such as a SavedModel), renamed to ``path`` when the block succeeds and removed
    when it raises. For writers that need a path rather than a handle (``TFRecordWriter``,
    ``tf.saved_model.save``).

    A directory is never renamed over an existing one unless ``replace=True`` (local paths
    only): then the old directory is renamed aside, the new one renamed in and the old one
    deleted, so a reader sees the old directory or the new one, never a mix (and, for the
    instant between the two renames, none). If the new one cannot be renamed in (e.g. another
    writer published ``path`` first) the old one is put back and the ``OSError`` raised.
    """
    final = os.fspath(path)
    tmp = _temp_sibling(final)
    remote = _is_remote(final)
    if replace and (remote or not directory):
        raise ValueError("atomic_path(replace=True) replaces a local directory: pass "
                         "directory=True and a local path")
    head = final.rstrip("/").rpartition("/")[0]
    if remote:
        import tensorflow as tf

        tf.io.gfile.makedirs(head)
    elif head:
        Path(head).mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        if remote:
            tf.io.gfile.rename(tmp, final, overwrite=not directory)
        elif directory:
            _fsync_tree(Path(tmp))
            if replace:
                _replace_directory(tmp, final)
            else:
                os.rename(tmp, final)  # fails rather than replace an existing directory
        else:
            os.replace(tmp, final)
    except BaseException:
        _remove(tmp, remote)
        raise
    if not remote:
        _fsync_directory(Path(final).parent)


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary siblings of local ``path`` (``.name.<pid>.<tag>.tmp``) left by
    writers that died (a ``kill -9`` runs no cleanup); those of live writers are left alone
    (:func:`temp_writer_gone`). Returns what was removed."""
    final = Path(path)
    removed = []
    for candidate in final.parent.glob(f".{final.name}.*.tmp"):
        pid, _, tag = candidate.name[len(final.name) + 2:-len(".tmp")].partition(".")
        if pid.isdigit() and temp_writer_gone(int(pid), tag, candidate):
            _remove(str(candidate), remote=False)
            removed.append(candidate)
    return removed


# A temp name's tag: writer_token() then this many random hex digits (_temp_sibling).
_RANDOM_HEX = 8
# A temp path whose writer cannot be checked (another machine's) is stale after this long.
STALE_TEMP_SECONDS = 86_400


@functools.cache
def writer_token() -> str:
    """8 hex digits naming this machine (host name, boot) and PID namespace. The pid in a temp
    name says whether its writer still runs only to processes that share both: a writer in
    another container, host or PID namespace writing to the same folder is judged by the
    temp path's age instead (:func:`temp_writer_gone`)."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:8]


def writer_tag() -> str:
    """What a temporary name carries after its writer's pid: :func:`writer_token` (which
    machine and PID namespace that pid belongs to) and random hex digits (unique per call),
    so that :func:`temp_writer_gone` can tell a dead writer's leftovers."""
    return writer_token() + uuid.uuid4().hex[:_RANDOM_HEX]


def temp_writer_gone(pid: int, tag: str, path: str | os.PathLike) -> bool:
    """Whether the writer of temp path ``path``, named with ``pid`` and ``tag`` (the hex after
    the pid), is gone: a process of this machine and PID namespace (``tag`` starts with
    :func:`writer_token`) that no longer runs, or any writer once the path is older than
    ``STALE_TEMP_SECONDS`` (another machine's, a reused pid, or an older release's name).
    This process's own temp paths are never stale."""
    local = len(tag) == len(writer_token()) + _RANDOM_HEX and tag.startswith(writer_token())
    if local and pid == os.getpid():
        return False
    if local and not process_alive(pid):
        return True
    try:
        return time.time() - os.stat(path).st_mtime > STALE_TEMP_SECONDS
    except OSError:
        return False


def _temp_sibling(final: str) -> str:
    """``dir/.name.<pid>.<tag>.tmp``: hidden, unique, and naming the writer's process; ``tag``
    is :func:`writer_token` (which machine and PID namespace that pid belongs to) and 8 random
    hex digits."""
    head, _, name = final.rstrip("/").rpartition("/")
    return f"{head + '/' if head else ''}.{name}.{os.getpid()}.{writer_tag()}.tmp"


def _replace_directory(tmp: str, final: str) -> None:
    """Publish directory ``tmp`` as ``final``, moving an existing ``final`` aside first."""
    old = None
    try:
        if os.path.lexists(final):
            old = _temp_sibling(final)
            os.rename(final, old)
        os.rename(tmp, final)
    except BaseException:  # an OSError, or a Ctrl-C / SIGTERM during or between the renames
        if old is not None and os.path.lexists(old) and not os.path.lexists(final):
            os.rename(old, final)  # put the old one back
            old = None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented, strict JSON, atomically; returns the path.

    numpy scalars and arrays, ``Path`` and dataclasses are converted; NaN and inf become
    ``null``. Conversion happens before the file is touched, so a value that cannot be written
    (a ``TypeError`` naming where it is, e.g. ``$.history.loss[3]``) leaves an existing file
    intact.
    """
    text = json.dumps(jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    return atomic_write(path, text)


def jsonable(obj: Any, where: str = "$") -> Any:
    """``obj`` as plain JSON types (see :func:`write_json`); ``where`` names it in errors."""
    import numpy as np

    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        obj = float(obj)
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist(), where)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        items = sorted(obj) if isinstance(obj, set | frozenset) else obj
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(items)]
    raise TypeError(
        f"cannot write {type(obj).__name__} to JSON at {where}; convert it to numbers, "
        "strings, lists or dicts first"
    )


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> tuple[int, str]:
    """``(size, hex digest)`` of a file, read once in 4 MiB chunks, so hashing never holds a
    file whole (a local path, or any TensorFlow filesystem path): shard checksums (SHA-256)
    and the feature cache's content keys (SHA-1) alike."""
    digest, size = hashlib.new(algorithm), 0
    path = os.fspath(path)
    if _is_remote(path):
        import tensorflow as tf

        opened = tf.io.gfile.GFile(path, "rb")
    else:
        opened = open(path, "rb")  # noqa: SIM115 (closed by the with below)
    with opened as handle:
        while chunk := handle.read(_DIGEST_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


_DIGEST_CHUNK = 4 * 2**20


def _is_remote(path: str) -> bool:
    return "://" in path


def _fsync_tree(root: Path) -> None:
    """Flush every file under a finished directory before it is published by a rename."""
    for file in (p for p in root.rglob("*") if p.is_file()):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(tmp: str, remote: bool) -> None:
    if remote:
        import tensorflow as tf

        with contextlib.suppress(Exception):
            if tf.io.gfile.isdir(tmp):
                tf.io.gfile.rmtree(tmp)
            elif tf.io.gfile.exists(tmp):
                tf.io.gfile.remove(tmp)
        return
    if os.path.isdir(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process: temp paths of live writers are never cleaned up.
    On Windows psutil asks (``os.kill(pid, 0)`` would terminate the process there); elsewhere
    signal 0 (psutil falls back to listing ``/proc``, which ``hidepid`` hides other users'
    processes from: their live writers' temp paths would look stale)."""
    if os.name == "nt":
        import psutil

        return psutil.pid_exists(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
