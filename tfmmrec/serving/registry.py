"""Serving: which model versions are loaded — polls ``<base>/<name>/<version>/`` like TF Serving.

A poller thread lists the integer version directories under each model's base path (hidden
``.tmp-*`` directories that ``tfmmrec export`` renames into place are ignored), loads the versions
the version policy asks for, replays their warmup records, and only then swaps them into the
serving map. A version that leaves the policy is taken out of the map first and unloaded once its
in-flight requests have finished, so a hot swap loses no request. States and error texts follow
TF Serving's ``GetModelStatus`` (START → LOADING → AVAILABLE → UNLOADING → END).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from tfmmrec.errors import ServingError, one_line_error
from tfmmrec.export.loader import check_model_dir
from tfmmrec.export.writer import list_versions
from tfmmrec.serving.json_tensor import short
from tfmmrec.serving.status import RequestStatus, not_found

logger = logging.getLogger(__name__)

State = get_model_status_pb2.ModelVersionStatus.State
METADATA_PATH = ("assets.extra", "tfmmrec.json")
WARMUP_PATH = ("assets.extra", "tf_serving_warmup_requests")


# -- configuration -----------------------------------------------------------------------------
@dataclass(frozen=True)
class VersionPolicy:
    """TF Serving's ``model_version_policy``: ``latest`` N (default 1), ``all``, or ``specific``."""

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, on_disk: Sequence[int]) -> set[int]:
        """The versions to serve among those present."""
        if self.kind == "all":
            return set(on_disk)
        if self.kind == "specific":
            return set(on_disk) & set(self.versions)
        return set(sorted(on_disk)[-self.num_versions:])

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """``latest``, ``latest:2``, ``all`` or ``specific:1,3`` (the CLI's --version-policy)."""
        kind, _, arg = text.strip().partition(":")
        try:
            if kind == "latest":
                policy = cls("latest", int(arg) if arg else 1)
                if policy.num_versions >= 1:
                    return policy
            elif kind == "all" and not arg:
                return cls("all")
            elif kind == "specific" and arg:
                return cls("specific", versions=tuple(int(v) for v in arg.split(",")))
        except ValueError:
            pass
        raise ServingError(f"invalid version policy {text!r} — expected latest, latest:N (N >= 1), "
                           "all, or specific:V1,V2 — fix --version-policy")

    @classmethod
    def from_proto(cls, proto) -> VersionPolicy:
        which = proto.WhichOneof("policy_choice")
        if which == "all":
            return cls("all")
        if which == "specific":
            return cls("specific", versions=tuple(proto.specific.versions))
        if which == "latest":
            return cls("latest", max(1, proto.latest.num_versions or 1))
        return cls()


@dataclass(frozen=True)
class ServedModel:
    """One served model: its name in requests, the folder holding its versions, the policy."""

    name: str
    base_path: Path
    policy: VersionPolicy = field(default_factory=VersionPolicy)


def read_model_config(path: str | Path) -> list[ServedModel]:
    """Models listed in a TF Serving ``models.config`` (a ``ModelServerConfig`` text proto).

    Relative base paths are resolved against the config file's folder.
    """
    path = Path(path)
    try:
        config = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    except OSError as exc:
        raise ServingError(f"cannot read model config {path}: {exc} — check "
                           "--model-config-file") from None
    except text_format.ParseError as exc:
        raise ServingError(f"{path} is not a ModelServerConfig text proto: {exc} — see "
                           "serving/models.config for the expected form") from None
    models = []
    for entry in config.model_config_list.config:
        if not entry.name or not entry.base_path:
            raise ServingError(f"{path}: every config entry needs a name and a base_path")
        if entry.model_platform not in ("", "tensorflow"):
            raise ServingError(f"{path}: model {entry.name!r} has model_platform "
                               f"{entry.model_platform!r}; tfmmrec serve only serves tensorflow")
        base = Path(entry.base_path)
        models.append(ServedModel(entry.name, base if base.is_absolute() else path.parent / base,
                                  VersionPolicy.from_proto(entry.model_version_policy)))
    if not models:
        raise ServingError(f"{path} lists no models (model_config_list {{ config {{ ... }} }})")
    return models


def format_model_config(models: Sequence[ServedModel]) -> str:
    """The ``models.config`` text proto TF Serving reads for ``models``."""
    config = model_server_config_pb2.ModelServerConfig()
    for model in models:
        entry = config.model_config_list.config.add()
        entry.name = model.name
        entry.base_path = str(model.base_path)
        entry.model_platform = "tensorflow"
        policy = entry.model_version_policy
        if model.policy.kind == "all":
            policy.all.SetInParent()
        elif model.policy.kind == "specific":
            policy.specific.versions.extend(model.policy.versions)
        else:
            policy.latest.num_versions = model.policy.num_versions
    return text_format.MessageToString(config)


# -- a loaded version --------------------------------------------------------------------------
class Servable:
    """One loaded SavedModel version: signatures to call, their SignatureDefs, in-flight count."""

    def __init__(self, name: str, version: int, path: Path, loaded, signature_defs: dict,
                 metadata: dict):
        self.name = name
        self.version = version
        self.path = path
        self.metadata = metadata
        self.signature_defs = signature_defs
        self.signatures = dict(loaded.signatures)
        self._loaded = loaded
        self._released = None  # a released version's objects, until its last request ends
        self._inflight = 0
        self._idle = threading.Condition()

    def enter(self) -> None:
        with self._idle:
            self._inflight += 1

    def exit(self) -> None:
        released = None
        with self._idle:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.notify_all()
                released, self._released = self._released, None
        if released is not None:  # the last request of a released version: free it now
            self._free(released)

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout)

    def release(self) -> None:
        """Drop the TF objects and free the ScaNN searchers, which TF's resource manager would
        otherwise keep for the process's life; with requests still in flight (an unload that
        timed out, a stop), the last of them does it. No request can start: the version is no
        longer served."""
        with self._idle:
            loaded, self._loaded, self.signatures = self._loaded, None, {}
            if self._inflight:
                self._released, loaded = loaded, None
        if loaded is not None:
            self._free(loaded)

    def _free(self, loaded) -> None:
        if not self.metadata.get("requires_scann_ops", True):
            return
        from tfmmrec.export.index.scann import free_searchers

        try:
            free_searchers(loaded)
        except Exception:  # freeing memory must never fail an unload or a request
            logger.warning("could not free the ScaNN searchers of %s", self.path, exc_info=True)


def load_servable(name: str, version: int, path: Path) -> Servable:
    """Load a SavedModel version (registering the custom ops its metadata says it needs)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    from tfmmrec._env import register_custom_ops

    metadata_file = path.joinpath(*METADATA_PATH)
    metadata = json.loads(metadata_file.read_text()) if metadata_file.is_file() else {}
    register_custom_ops(scann=metadata.get("requires_scann_ops", True))
    saved_model = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    graphs = [g for g in saved_model.meta_graphs if "serve" in g.meta_info_def.tags]
    if not graphs:
        raise ValueError(f"{path}/saved_model.pb has no MetaGraph tagged 'serve'")
    loaded = tf.saved_model.load(str(path), tags=["serve"])
    return Servable(name, version, path, loaded, dict(graphs[0].signature_def), metadata)


@dataclass
class VersionRecord:
    """What GetModelStatus reports for one version."""

    state: int = State.START
    error_code: str = "OK"
    error_message: str = ""
    failures: int = 0
    retry_at: float = 0.0  # time.monotonic() before which a failed load is not retried


def request_string(name: str, version: int | None) -> str:
    """TF Serving's ServableRequest::DebugString, used in its NOT_FOUND messages (the name
    shortened: it is the request's)."""
    name = short(name, quoted=False)
    return f"Latest({name})" if version is None else f"Specific({name}, {version})"


# -- the registry ------------------------------------------------------------------------------
class ModelRegistry:
    """Keeps each configured model's aspired versions loaded and hands out request handles.

    Args:
        models: the models to serve.
        poll_seconds: how often the base paths are listed for new or removed versions
            (TF Serving's ``--file_system_poll_wait_seconds``); 0 disables polling after start.
        warmup: a callable run on every freshly loaded version before it is served (replays
            ``assets.extra/tf_serving_warmup_requests``); a failing warmup fails the load.
        unload_timeout: seconds to wait for in-flight requests of a retired version.
        retry_seconds: back-off after a failed load: ``retry_seconds * 2**(failures - 1)``,
            capped at ``max_retry_seconds``. A failed version is retried for as long as it is
            on disk (a folder still being copied in loads once complete), never given up on.
    """

    def __init__(self, models: Sequence[ServedModel], *, poll_seconds: float = 1.0,
                 warmup: Callable[[Servable], None] | None = None, unload_timeout: float = 60.0,
                 retry_seconds: float = 1.0, max_retry_seconds: float = 60.0,
                 loader: Callable[[str, int, Path], Servable] = load_servable):
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ServingError(f"model names must be unique, got {names}")
        for model in models:  # a version folder as base path: fail now, not wait forever
            check_model_dir(model.base_path)
        self.models = list(models)
        self.poll_seconds = poll_seconds
        self._warmup = warmup
        self._unload_timeout = unload_timeout
        self._retry_seconds = retry_seconds
        self._max_retry_seconds = max_retry_seconds
        self._loader = loader
        self._lock = threading.Lock()
        self._serving: dict[str, dict[int, Servable]] = {m.name: {} for m in models}
        self._records: dict[str, dict[int, VersionRecord]] = {m.name: {} for m in models}
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Load what is on disk now (blocking, as TF Serving does at start-up), then poll."""
        self.poll_once()
        for model in self.models:
            if not self._serving[model.name]:
                logger.warning("no loadable version of model %r under %s yet; waiting for one",
                               model.name, model.base_path)
        if self.poll_seconds > 0:
            self._thread = threading.Thread(target=self._poll_loop, name="tfmmrec-version-poller",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(self._unload_timeout, 5.0))
        with self._lock:
            serving, self._serving = self._serving, {m.name: {} for m in self.models}
        for versions in serving.values():
            for servable in versions.values():
                servable.release()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll_once()
            except Exception:  # a bad poll must not kill the poller; the next one retries
                logger.exception("polling model base paths failed")

    def poll_once(self) -> None:
        """Bring every model in line with its base path and policy (load first, then unload)."""
        with self._poll_lock:
            for model in self.models:
                if not self._stop.is_set():
                    self._sync(model)

    # -- requests ----------------------------------------------------------------------------
    @contextmanager
    def handle(self, name: str, version: int | None = None) -> Iterator[Servable]:
        """The newest available version (or ``version``), held until the request is done."""
        with self._lock:
            versions = self._serving.get(name) or {}
            key = max(versions, default=None) if version is None else version
            servable = versions.get(key) if key is not None else None
            if servable is None:
                raise not_found(f"Servable not found for request: {request_string(name, version)}")
            servable.enter()
        try:
            yield servable
        finally:
            servable.exit()

    def status(self, name: str, version: int | None = None) -> list[tuple[int, VersionRecord]]:
        """``(version, record)`` pairs, as GetModelStatus lists them (NOT_FOUND texts included)."""
        with self._lock:
            records = dict(self._records.get(name, {}))
        if version is not None:
            if version not in records:
                raise not_found(f"Could not find version {version} of model "
                                f"{short(name, quoted=False)}")
            return [(version, records[version])]
        if not records:
            raise not_found(f"Could not find any versions of model {short(name, quoted=False)}")
        return sorted(records.items())

    def available_versions(self, name: str) -> list[int]:
        with self._lock:
            return sorted(self._serving.get(name, {}))

    # -- loading and unloading ---------------------------------------------------------------
    def _sync(self, model: ServedModel) -> None:
        on_disk = list_versions(model.base_path)
        records = self._records[model.name]
        aspired = model.policy.select(on_disk)
        loaded = set(self._serving[model.name])
        now = time.monotonic()
        for version in sorted(aspired - loaded, reverse=True):
            record = records.get(version)
            if record is None or record.failures == 0 or now >= record.retry_at:
                self._load(model, version)
        if not set(self._serving[model.name]):
            # Nothing serves yet (e.g. the newest version is still being copied in): serve the
            # newest versions that have not failed, while the failed ones wait for a retry.
            healthy = [v for v in on_disk if v not in records or records[v].failures == 0]
            for version in sorted(model.policy.select(healthy) - aspired, reverse=True):
                self._load(model, version)
        loaded = set(self._serving[model.name])
        # Availability first: keep old versions until an aspired one serves (unless deleted).
        keep_old = not (aspired & loaded)
        for version in sorted(loaded - aspired):
            if version in on_disk and keep_old:
                continue
            self._unload(model.name, version)

    def _set_record(self, name: str, version: int, **changes) -> VersionRecord:
        with self._lock:
            record = self._records[name].setdefault(version, VersionRecord())
            for key, value in changes.items():
                setattr(record, key, value)
            return record

    def _load(self, model: ServedModel, version: int) -> None:
        path = model.base_path / str(version)
        record = self._set_record(model.name, version, state=State.LOADING, error_code="OK",
                                  error_message="")
        logger.info("loading %s version %d from %s", model.name, version, path)
        try:
            servable = self._loader(model.name, version, path)
            if self._warmup is not None:
                self._warmup(servable)
        except Exception as exc:
            detail = str(exc.message if isinstance(exc, RequestStatus) else exc).strip()
            message = one_line_error(detail)  # what GetModelStatus reports; the log keeps all
            failures = record.failures + 1
            delay = min(self._max_retry_seconds, self._retry_seconds * 2 ** (failures - 1))
            self._set_record(model.name, version, state=State.END, error_code="UNKNOWN",
                             error_message=message, failures=failures,
                             retry_at=time.monotonic() + delay)
            logger.error("cannot load %s version %d (attempt %d; retrying in %.0f s while it "
                         "is on disk): %s", model.name, version, failures, delay, detail)
            return
        with self._lock:
            serving = dict(self._serving[model.name])
            serving[version] = servable
            self._serving[model.name] = serving
            self._records[model.name][version] = VersionRecord(State.AVAILABLE)
        logger.info("serving %s version %d", model.name, version)

    def _unload(self, name: str, version: int) -> None:
        with self._lock:
            serving = dict(self._serving[name])
            servable = serving.pop(version)
            self._serving[name] = serving
            self._records[name][version].state = State.UNLOADING
        if not servable.wait_idle(self._unload_timeout):
            logger.warning("%s version %d still had requests after %.0f s; unloading anyway",
                           name, version, self._unload_timeout)
        servable.release()
        self._set_record(name, version, state=State.END)
        logger.info("unloaded %s version %d", name, version)
