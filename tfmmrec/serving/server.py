"""Serving: ``tfmmrec serve`` — a TF Serving protocol-compatible server for local use and tests.

It speaks TF Serving's gRPC API (``PredictionService.Predict``/``GetModelMetadata``,
``ModelService.GetModelStatus``) and REST API over the same ``<base>/<name>/<version>/`` folders,
so clients cannot tell it from ``tensorflow_model_server``. It is *not* the C++ server: it runs
the SavedModel through TensorFlow's Python runtime (with ``tensorflow_text`` and ``scann``
imported, so ScaNN exports work too), and it has no batching scheduler, version labels,
Classify/Regress, monitoring or model-config reload over gRPC.
"""

from __future__ import annotations

import logging
import os
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from tensorflow_serving.apis import (
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from tfmmrec.errors import ServingError, one_line_error
from tfmmrec.serving.limits import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_REQUEST_BYTES
from tfmmrec.serving.predict import PredictionCore
from tfmmrec.serving.registry import ModelRegistry, ServedModel, VersionPolicy, list_versions
from tfmmrec.serving.rest import RestServer, connections_per_client
from tfmmrec.serving.status import RequestStatus

logger = logging.getLogger(__name__)


def default_num_threads() -> int:
    """The cores this process may use (cgroup/affinity aware where the OS says so)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class _PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: PredictionCore):
        self.core = core

    def Predict(self, request, context):
        return _call(context, lambda: self.core.predict(request, context.time_remaining()))

    def GetModelMetadata(self, request, context):
        return _call(context, lambda: self.core.model_metadata(request))

    def Classify(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Classify is not supported by tfmmrec serve")

    def Regress(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Regress is not supported by tfmmrec serve")

    def MultiInference(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "MultiInference is not supported by tfmmrec serve")


class _ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: PredictionCore):
        self.core = core

    def GetModelStatus(self, request, context):
        return _call(context, lambda: self.core.model_status(request))

    def HandleReloadConfigRequest(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "config reload is not supported by tfmmrec serve; restart it with the new "
                      "--model-config-file (new versions are picked up without a restart)")


def _call(context, function):
    try:
        return function()
    except RequestStatus as status:
        context.abort(status.code, status.message)
    except Exception as exc:  # a bug must cost one request, not the server
        logger.exception("request failed")
        context.abort(grpc.StatusCode.INTERNAL,
                      f"internal error in tfmmrec serve: {one_line_error(exc)}")


def _check_policy_finds_versions(model: ServedModel, on_disk: list[int]) -> None:
    """A ``specific`` policy naming no version on disk is a usage error, not a wait (with no
    version on disk at all the server waits for an export, whatever the policy)."""
    policy = model.policy
    missing = sorted(set(policy.versions) - set(on_disk)) if policy.kind == "specific" else []
    if not missing:
        return
    if policy.select(on_disk):
        logger.warning("model %r: version policy asks for version(s) %s, not under %s; serving "
                       "%s until they appear", model.name, missing, model.base_path,
                       sorted(policy.select(on_disk)))
        return
    raise ServingError(
        f"model {model.name!r}: version policy specific:{','.join(map(str, policy.versions))} "
        f"asks for version{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))}, "
        f"not under {model.base_path} (versions present: {', '.join(map(str, on_disk))}) — "
        "fix --version-policy (or the models.config policy), or export the missing version")


@dataclass
class ServerOptions:
    """How the server listens and how much work it takes on.

    ``port``/``rest_port`` 0 pick a free port (read the bound ones from :class:`ModelServer`);
    ``rest_port`` None disables REST. ``num_threads`` bounds concurrent model executions and
    the gRPC worker pool; ``max_request_bytes`` caps a gRPC message and a REST body;
    ``rest_max_connections`` the REST connections served at once (more get a 503),
    ``rest_max_connections_per_client`` those one client address may hold (default None: no
    cap of its own, as behind a proxy; more from it get a 503) and ``rest_body_budget`` the
    REST body bytes read or held at once (default 4 × ``max_request_bytes``).
    """

    host: str = "127.0.0.1"
    port: int = 8500
    rest_port: int | None = 8501
    num_threads: int = 0
    poll_seconds: float = 1.0
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    warmup: bool = True
    rest_max_connections: int = DEFAULT_MAX_CONNECTIONS
    rest_body_budget: int | None = None
    rest_max_connections_per_client: int | None = None

    def __post_init__(self) -> None:
        if self.num_threads <= 0:
            self.num_threads = default_num_threads()
        if self.max_request_bytes < 1024:
            raise ServingError(f"max_request_bytes={self.max_request_bytes} is too small — use "
                               "at least 1024 (default 64 MiB)")
        if self.rest_max_connections < 1:
            raise ServingError(f"rest_max_connections={self.rest_max_connections} must be at "
                               f"least 1 (default {DEFAULT_MAX_CONNECTIONS})")
        # checked, not rewritten: dataclasses.replace of another global cap must still work
        connections_per_client(self.rest_max_connections_per_client, self.rest_max_connections)
        if self.rest_body_budget is not None and self.rest_body_budget < self.max_request_bytes:
            raise ServingError(f"rest_body_budget={self.rest_body_budget} is smaller than "
                               f"max_request_bytes={self.max_request_bytes}: a body at the limit "
                               "could never be read")


class ModelServer:
    """gRPC + REST front ends over one :class:`ModelRegistry`; use as a context manager.

    Example::

        with ModelServer.for_base_path("runs/models/tfmmrec", ServerOptions(port=0)) as server:
            client = ServingClient(f"127.0.0.1:{server.port}", "tfmmrec")
    """

    def __init__(self, models: list[ServedModel], options: ServerOptions | None = None):
        self.options = options or ServerOptions()
        warmup = (lambda servable: self.core.warmup(servable)) if self.options.warmup else None
        self.registry = ModelRegistry(models, poll_seconds=self.options.poll_seconds,
                                      warmup=warmup)
        self.core = PredictionCore(self.registry, self.options.num_threads,
                                   self.options.max_request_bytes)
        self._grpc: grpc.Server | None = None
        self._grpc_started = False
        self._rest: RestServer | None = None
        self.port: int | None = None
        self.rest_port: int | None = None

    @classmethod
    def for_base_path(cls, base_path: str | os.PathLike, options: ServerOptions | None = None,
                      model_name: str | None = None,
                      policy: VersionPolicy | None = None) -> ModelServer:
        """Serve one model from ``base_path`` (the folder holding its version folders)."""
        base = Path(base_path)
        model = ServedModel(model_name or base.name, base, policy or VersionPolicy())
        return cls([model], options)

    def start(self) -> ModelServer:
        """Bind both ports, load the models on disk, then serve. Binding comes first so a busy
        port fails in a second, not after a model load and warmup; connections made while the
        models load wait in the listen backlog and are answered once they are loaded."""
        opts = self.options
        for model in self.registry.models:
            _check_policy_finds_versions(model, list_versions(model.base_path))
        try:
            self._bind(opts)
            self.registry.start()
            self._check_initial_loads()
            self._grpc.start()
            self._grpc_started = True
            if self._rest is not None:
                self._rest.start()
        except BaseException:
            self.stop()
            raise
        logger.info("serving %s: gRPC on %s:%s, REST on %s", ", ".join(
            m.name for m in self.registry.models), opts.host, self.port,
            f"{opts.host}:{self.rest_port}" if self.rest_port else "off")
        return self

    def _bind(self, opts: ServerOptions) -> None:
        """Take the gRPC and REST ports (listening, not yet serving)."""
        self._bind_grpc(opts)
        if opts.rest_port is not None:
            try:
                self._rest = RestServer((opts.host, opts.rest_port), self.core,
                                        opts.max_request_bytes, opts.rest_body_budget,
                                        opts.rest_max_connections,
                                        opts.rest_max_connections_per_client)
            except OSError as exc:
                raise ServingError(f"cannot listen for REST on {opts.host}:{opts.rest_port}: "
                                   f"{exc} — pick another --rest-api-port") from None
            self.rest_port = self._rest.port

    def _check_initial_loads(self) -> None:
        """Like tensorflow_model_server, refuse to start when versions exist but none loads."""
        for model in self.registry.models:
            if not list_versions(model.base_path) or self.registry.available_versions(model.name):
                continue
            try:
                records = self.registry.status(model.name)
            except RequestStatus:  # nothing was even tried (the folder changed meanwhile)
                records = []
            errors = "; ".join(f"version {version}: {record.error_message}"
                               for version, record in records if record.error_message)
            raise ServingError(f"model {model.name!r}: no version under {model.base_path} could "
                               f"be loaded ({errors}) — fix or re-export the model (a failing "
                               "warmup record fails the load, as in TF Serving)")

    def _bind_grpc(self, opts: ServerOptions) -> None:
        limit = opts.max_request_bytes
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=opts.num_threads,
                                       thread_name_prefix="tfmmrec-grpc"),
            options=[("grpc.max_receive_message_length", limit),
                     ("grpc.max_send_message_length", limit),
                     ("grpc.so_reuseport", 0)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            _PredictionServicer(self.core), self._grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            _ModelServicer(self.core), self._grpc)
        try:
            self.port = self._grpc.add_insecure_port(f"{opts.host}:{opts.port}")
        except RuntimeError as exc:
            raise ServingError(f"cannot listen for gRPC on {opts.host}:{opts.port}: {exc} — "
                               "pick another --port") from None
        if not self.port:
            raise ServingError(f"cannot listen for gRPC on {opts.host}:{opts.port} (in use?) — "
                               "pick another --port")

    def stop(self, grace: float = 2.0) -> None:
        """Stop accepting requests, let running ones finish (``grace`` s), unload models."""
        if self._grpc is not None:
            if not self._grpc_started:  # a bound gRPC server frees its port only once started
                self._grpc.start()
            self._grpc.stop(grace).wait()
            self._grpc, self._grpc_started = None, False
        if self._rest is not None:
            self._rest.stop()
            self._rest = None
        self.registry.stop()

    def wait(self) -> None:
        """Block until the gRPC server terminates (``tfmmrec serve`` runs until signalled)."""
        if self._grpc is not None:
            self._grpc.wait_for_termination()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
