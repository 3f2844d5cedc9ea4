"""Serving: the ``tfmmrec serve`` and ``tfmmrec query`` subcommands (added to the main CLI)."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import re
import signal
import sys
import threading
from dataclasses import dataclass

from tfmmrec.errors import ServingError
from tfmmrec.serving.limits import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_REQUEST_BYTES,
)

MAX_PORT = 65535
DEFAULT_GRPC_PORT = 8500  # TF Serving's, and `tfmmrec serve`'s
DEFAULT_REST_PORT = 8501


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 (any free port) to 65535. Sockets take a port modulo
    2¹⁶, so 70000 would otherwise listen on 4464 without a word."""
    value = _integer(text)
    if not 0 <= value <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"{value} is not a port: expected 0 (any free port) "
                                         f"to {MAX_PORT}")
    return value


@dataclass(frozen=True)
class Target:
    """``tfmmrec query --target``: a host and, when given, a port (else the protocol's)."""

    host: str
    port: int | None = None

    def address(self, rest: bool) -> str:
        """``host:port``, the port defaulting to what ``tfmmrec serve`` listens on."""
        port = self.port if self.port is not None else (DEFAULT_REST_PORT if rest
                                                         else DEFAULT_GRPC_PORT)
        return f"{self.host}:{port}"


_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+)(?::(?P<port>.*))?")


def target_address(text: str) -> Target:
    """An argparse type: ``host``, ``host:port`` or ``[ipv6]:port`` (``http://`` optional). A
    host alone gets its protocol's default port later: gRPC itself would dial 443."""
    address = text.strip().removeprefix("http://").rstrip("/")
    with contextlib.suppress(ValueError):  # a bare IPv6 address: no port
        return Target(f"[{ipaddress.IPv6Address(address)}]")
    match = _HOST_PORT.fullmatch(address)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not host:port (e.g. 127.0.0.1:8500, "
                                         "[::1]:8500, or a host alone for the default port)")
    port = match["port"]
    if port is None:
        return Target(match["host"])
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"{text!r}: port {port!r} is not a number from 1 to "
                                         f"{MAX_PORT}")
    return Target(match["host"], int(port))


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0 (0 would fail every request)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds "
                                         "(e.g. 10)")
    return value


def _integer_in(minimum: int, maximum: int | None = None):
    """An argparse type: an integer >= ``minimum`` (and <= ``maximum``: e.g. what the
    request's int32 ``k`` can hold, instead of an OverflowError when it is built)."""
    def parse(text: str) -> int:
        value = _integer(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{value} is above the maximum {maximum}")
        return value

    parse.__name__ = "integer"  # argparse's message: "invalid integer value"
    return parse


def _poll_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds >= 0 (0: never poll) and at most a day
    (the poller's timer overflows on inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 86_400:
        raise argparse.ArgumentTypeError(
            f"{text} is not a poll interval: expected 0 (never) to 86400 seconds")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def add_serving_commands(subparsers) -> None:
    """Register ``serve`` and ``query``; each sets ``handler(args) -> exit code``."""
    _add_serve(subparsers)
    _add_query(subparsers)


# -- serve -------------------------------------------------------------------------------------
def _add_serve(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve", help="serve exported models over TF Serving's gRPC and REST APIs",
        description="A TF Serving protocol-compatible server (gRPC PredictionService/"
                    "ModelService and the REST /v1/models API) for machines without "
                    "tensorflow_model_server or without one linked with ScaNN. It is not the C++ "
                    "server: no batching scheduler, version labels or Classify/Regress.")
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-base-path", help="folder holding <version>/ folders, e.g. "
                        "runs/models/tfmmrec")
    source.add_argument("--model-config-file", help="a TF Serving models.config "
                        "(ModelServerConfig text proto) listing several models")
    serve.add_argument("--model-name", help="name clients ask for (default: the folder name)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1; 0.0.0.0 for every interface)")
    serve.add_argument("--port", type=port_number, default=DEFAULT_GRPC_PORT,
                       help="gRPC port (default: %(default)s; 0: any free port)")
    serve.add_argument("--rest-api-port", type=port_number, default=DEFAULT_REST_PORT,
                       help="REST port (default: %(default)s; 0: any free port)")
    serve.add_argument("--no-rest", action="store_true", help="serve gRPC only")
    serve.add_argument("--poll-seconds", type=_poll_seconds, default=1.0,
                       help="seconds between looks for new versions (TF Serving's "
                            "--file_system_poll_wait_seconds; default: %(default)g; 0: never)")
    serve.add_argument("--version-policy", default="latest",
                       help="latest | latest:N | all | specific:V1,V2 (default: newest only)")
    serve.add_argument("--num-threads", type=_integer_in(0), default=0,
                       help="concurrent model executions and gRPC workers (default: cores)")
    serve.add_argument("--max-request-bytes", type=_integer_in(1),
                       default=DEFAULT_MAX_REQUEST_BYTES,
                       help="largest gRPC message / REST body accepted (default 64 MiB)")
    serve.add_argument("--rest-max-connections", type=_integer_in(1),
                       default=DEFAULT_MAX_CONNECTIONS,
                       help="REST connections served at once, a thread each; more are answered "
                            "503 at once (default: %(default)s)")
    serve.add_argument("--rest-max-connections-per-client", type=_integer_in(1),
                       metavar="N", help="of those, the REST connections one client address "
                       "may hold; more from it are answered 503 at once (default: no cap of "
                       "its own, since behind a proxy every connection has one address; set it "
                       "when clients reach the port directly; at most --rest-max-connections)")
    serve.add_argument("--rest-body-budget", type=_integer_in(1), metavar="BYTES",
                       help="REST body bytes all connections may read or hold at once; a "
                            "request past it is a 503 (default: 4 x --max-request-bytes)")
    serve.add_argument("--no-warmup", action="store_true",
                       help="skip replaying assets.extra/tf_serving_warmup_requests on load")
    serve.set_defaults(handler=_serve)


def _serve(args) -> int:
    from tfmmrec.serving.registry import ServedModel, VersionPolicy, read_model_config
    from tfmmrec.serving.server import ModelServer, ServerOptions

    options = ServerOptions(host=args.host, port=args.port,
                            rest_port=None if args.no_rest else args.rest_api_port,
                            num_threads=args.num_threads, poll_seconds=args.poll_seconds,
                            max_request_bytes=args.max_request_bytes, warmup=not args.no_warmup,
                            rest_max_connections=args.rest_max_connections,
                            rest_max_connections_per_client=(
                                args.rest_max_connections_per_client),
                            rest_body_budget=args.rest_body_budget)
    if args.model_config_file:
        if args.model_name:
            raise ServingError("--model-name only goes with --model-base-path; models.config "
                               "names its models itself")
        models = read_model_config(args.model_config_file)
    else:
        from pathlib import Path

        base = Path(args.model_base_path)
        if not base.is_dir():
            raise ServingError(f"model base path {base} does not exist — export a model first "
                               "(tfmmrec export) or fix --model-base-path")
        models = [ServedModel(args.model_name or base.name, base,
                              VersionPolicy.parse(args.version_policy))]
    server = ModelServer(models, options)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    try:
        loaded = {m.name: server.registry.available_versions(m.name) for m in models}
        rest = f"REST {options.host}:{server.rest_port}" if server.rest_port else "REST off"
        print(f"tfmmrec serve: gRPC {options.host}:{server.port}, {rest}; models: "
              + ", ".join(f"{name} versions {versions}" for name, versions in loaded.items())
              + " (protocol-compatible local server, not tensorflow_model_server); Ctrl-C stops",
              flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    print("tfmmrec serve: stopped", flush=True)
    return 0


# -- query -------------------------------------------------------------------------------------
def _add_query(subparsers) -> None:
    query = subparsers.add_parser(
        "query", help="query a served model (TF Serving or tfmmrec serve) over gRPC or REST")
    query.add_argument("--target", type=target_address, metavar="HOST[:PORT]",
                       default=Target("127.0.0.1"),
                       help=f"the server's gRPC port, or REST port with --rest (default: "
                            f"127.0.0.1:{DEFAULT_GRPC_PORT}, with --rest 127.0.0.1:"
                            f"{DEFAULT_REST_PORT}; a host alone gets that port)")
    query.add_argument("--model", default="tfmmrec",
                       help="model name on the server (default: %(default)s)")
    query.add_argument("--k", type=_integer_in(1, 2**31 - 1),
                       help="how many items (default: the export's default k, for every kind "
                            "of query)")
    query.add_argument("--version", type=_integer_in(1, 2**63 - 1),
                       help="a specific version (default: newest)")
    query.add_argument("--rest", action="store_true", help="use the REST API")
    query.add_argument("--timeout", type=positive_seconds, default=10.0,
                       help="seconds per request, > 0 (default: %(default)g)")
    query.add_argument("--json", action="store_true", help="print JSON")
    query.add_argument("--session", nargs="+", metavar="ITEM",
                       help="recommend for a session: its recent item ids, oldest first "
                            "(recommend_session; with --user: that user's session)")
    query.add_argument("--exclude", nargs="+", metavar="ITEM",
                       help="item ids never to return, for every query of the command (--user, "
                            "--session, --<modality>; at most the export's max_exclude)")
    query.set_defaults(handler=_query)

    if hasattr(query, "deferred"):  # only when `query` is parsed: the registry loads TF
        query.deferred.append(_add_query_what)
    else:
        _add_query_what(query)


# `tfmmrec query`'s own options besides --<modality> (a modality may not take these names).
QUERY_WORDS = frozenset({"user", "session", "exclude", "embed", "status", "metadata"})


def _add_query_what(query) -> None:
    """What to ask: ``--user``, one option per registered modality (``--text``, ``--image``,
    ``--audio`` and any modality registered since: ``--<name>``), ``--embed``, ``--status``,
    ``--metadata``; or ``--session`` (outside the group: it takes an optional ``--user``, so
    :func:`_check_what` checks it)."""
    from tfmmrec import modalities

    what = query.add_mutually_exclusive_group()
    what.add_argument("--user", action="append",
                      help="user id (repeatable; one with --session)")
    for spec in modalities.specs():
        if f"--{spec.name}" in query._option_string_actions or spec.name in QUERY_WORDS:
            raise ServingError(f"modality {spec.name!r} clashes with `tfmmrec query`'s own "
                               f"--{spec.name} option: register it under another name")
        what.add_argument(f"--{spec.name}", action="append", dest=f"query_{spec.name}",
                          metavar=spec.query_metavar,
                          help=spec.query_help or f"{spec.name} content (repeatable)")
    what.add_argument("--embed", action="append", metavar="USER",
                      help="print a user's query embedding (repeatable)")
    what.add_argument("--status", action="store_true", help="print the model's version states")
    what.add_argument("--metadata", action="store_true", help="print the signatures")


def _check_what(args) -> list[str]:
    """The --<modality> options given, after the checks argparse's group cannot make: exactly
    one thing asked, ``--session`` with at most one ``--user`` and nothing else, ``--exclude``
    only for a retrieval signature."""
    from tfmmrec import modalities

    given = [m for m in modalities.names() if getattr(args, f"query_{m}", None)]
    others = [f"--{m}" for m in given] + [f"--{o}" for o in ("embed", "status", "metadata")
                                          if getattr(args, o)]
    if args.session is not None and others:
        raise ServingError(f"--session goes with an optional --user only, not {others[0]}")
    if args.session is not None and len(args.user or []) > 1:
        raise ServingError(f"--session is one session: give at most one --user (got "
                           f"{len(args.user)}: {', '.join(args.user)})")
    if args.session is None and not args.user and not others:
        raise ServingError("nothing to ask: give one of --user, --session, "
                           + ", ".join(f"--{m}" for m in modalities.names())
                           + ", --embed, --status, --metadata (tfmmrec query --help)")
    if args.exclude and any(getattr(args, o) for o in ("embed", "status", "metadata")):
        raise ServingError(f"--exclude goes with --user, --session or a --<modality> query, "
                           f"not {others[-1]}")
    return given


def _query(args) -> int:
    from tfmmrec.serving.client import ServingClient, format_results, served_items

    given = _check_what(args)
    known = None  # --user: whether each user is one the model knows
    unknown_items: list[str] = []  # --session: the session's items the catalogue lacks
    with ServingClient(args.target.address(args.rest), args.model, version=args.version,
                       rest=args.rest, timeout=args.timeout) as client:
        if args.status:
            return _print(client.status(), args.json, _status_text)
        if args.metadata:
            return _print(client.metadata(), args.json, _metadata_text)
        if args.embed:
            embedding = client.embed_query(args.embed)
            for user, vector in zip(args.embed, embedding, strict=True):
                print(json.dumps({"user_id": user, "embedding": vector.tolist()}))
            return 0
        # No --k: k stays out of the request and the signature's default (the export's
        # default_k, within even a catalogue smaller than export.k) applies. One --exclude
        # list for every row of the request.
        if args.session is not None:
            queries = [{"session_item_ids": args.session,
                        **({"user_id": args.user[0]} if args.user else {})}]
            result = client.recommend_session([args.session], args.user, args.k,
                                              _rows(args.exclude, 1))
            unknown_items = [item for item, found in zip(
                args.session, client.known_items(args.session), strict=True) if not found]
        elif args.user:
            queries = args.user
            result = client.recommend(args.user, args.k, _rows(args.exclude, len(queries)))
            known = client.known_users(args.user)
        else:
            queries = getattr(args, f"query_{given[0]}")
            result = client.query(given[0], queries, args.k, _rows(args.exclude, len(queries)))
    if args.json:
        rows = []
        for row, query in enumerate(queries):
            items = served_items(result, row)
            rows.append({"query": query, "item_ids": [i for i, _ in items],
                         "scores": [s for _, s in items]})
            if known is not None:
                rows[-1]["known_user"] = bool(known[row])
            if args.session is not None:
                rows[-1]["unknown_session_items"] = unknown_items
            if "retrieval_scores" in result:  # a two-stage recommend: both stages' scores
                rows[-1]["retrieval_scores"] = [
                    s for _, s in served_items(result, row, "retrieval_scores")]
        return _print(rows, True, str)
    labels = [_label(q) for q in queries]
    if known is not None:  # an unknown id is served, not refused: say what the list is
        labels = [label if is_known else f"{label} (not a user the model knows: the cold-start "
                  "list)" for label, is_known in zip(labels, known, strict=True)]
    if unknown_items:  # served without them: a typo would otherwise go unnoticed
        labels = [f"{labels[0]} (not in the catalogue, ignored: {' '.join(unknown_items)})"]
    print(format_results(result, labels))
    return 0


def _rows(exclude: list[str] | None, rows: int) -> list[list[str]] | None:
    """``--exclude`` as the signature's ``exclude_item_ids``: the same ids for every row."""
    return None if exclude is None else [exclude] * rows


def _label(query: str | dict) -> str:
    """How a query heads its results: itself, or a session's items (and user)."""
    if isinstance(query, str):
        return query
    user = f" (user {query['user_id']})" if "user_id" in query else ""
    return f"session {' '.join(query['session_item_ids'])}{user}"


def _print(payload, as_json: bool, formatter) -> int:
    print(json.dumps(payload, indent=2) if as_json else formatter(payload))
    sys.stdout.flush()
    return 0


def _status_text(rows: list[dict]) -> str:
    return "\n".join(f"version {r['version']}: {r['state']}"
                     + (f" ({r['error_code']}: {r['error_message']})"
                        if r["error_code"] != "OK" else "") for r in rows)


def _metadata_text(signatures: dict) -> str:
    lines = []
    for name, parts in sorted(signatures.items()):
        if name.startswith("__"):  # __saved_model_init_op: not callable
            continue
        inputs = ", ".join(f"{a}: {d} {s}" for a, (d, s) in sorted(parts["inputs"].items()))
        outputs = ", ".join(f"{a}: {d} {s}" for a, (d, s) in sorted(parts["outputs"].items()))
        lines.append(f"{name}({inputs}) -> {outputs}")
    return "\n".join(lines)
