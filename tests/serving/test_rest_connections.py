"""The REST port's connection caps: a thread per connection up to ``max_connections``, at most
``max_connections_per_client`` of them from one address; past either a connection is answered
503 from the accept loop and closed, and its slot-holders' leaving frees room again."""

from __future__ import annotations

import dataclasses
import socket
import threading
from types import SimpleNamespace

import pytest

from tests.serving.conftest import MODEL
from tests.serving.test_rest_body_budget import good_body, wait_until
from tests.serving.test_rest_http import Connection, post_head
from tfmmrec.errors import ServingError
from tfmmrec.serving.rest import RestServer, connections_per_client
from tfmmrec.serving.server import ServerOptions

CAP = 2


@pytest.fixture
def capped_rest(server):
    """A second REST front end over the session server's core, taking CAP connections."""
    rest = RestServer(("127.0.0.1", 0), server.core, 1 << 20, max_connections=CAP)
    rest.start()
    yield rest
    rest.stop()


def connect(rest: RestServer) -> Connection:
    return Connection(SimpleNamespace(rest_port=rest.port))


def idle(rest: RestServer) -> Connection:
    """A connection that sends nothing, once the server has given it a thread."""
    before = rest.open_connections
    opened = connect(rest)
    wait_until(lambda: rest.open_connections == before + 1)
    return opened


def predict(connection: Connection, body: bytes) -> tuple[int, dict[str, str], dict]:
    connection.send(post_head({"Content-Length": str(len(body))}) + body)
    return connection.response()


def test_a_connection_past_the_cap_is_a_503_and_room_comes_back(capped_rest, tiny_exports):
    held = [idle(capped_rest) for _ in range(CAP)]
    try:
        refused = connect(capped_rest)
        status, headers, payload = predict(refused, good_body(tiny_exports))
        assert status == 503
        assert headers["connection"] == "close"
        assert "Too many connections" in payload["error"]
        assert "--rest-max-connections" in payload["error"]
        assert refused.closed_by_server()
        refused.close()
        assert capped_rest.open_connections == CAP
    finally:
        held.pop().close()
    wait_until(lambda: capped_rest.open_connections == CAP - 1)
    served = connect(capped_rest)
    try:
        status, _, payload = predict(served, good_body(tiny_exports))
        assert status == 200, payload
        assert payload["outputs"]
    finally:
        served.close()
        for connection in held:
            connection.close()
    wait_until(lambda: capped_rest.open_connections == 0)


def test_a_flood_of_connections_costs_no_thread_each(capped_rest):
    """Hundreds of clients past the cap: each is answered and closed by the accept loop, so the
    server's threads stay at the cap."""
    held = [idle(capped_rest) for _ in range(CAP)]
    threads_before = threading.active_count()
    flood = [connect(capped_rest) for _ in range(200)]
    try:
        for connection in flood:
            assert connection.response()[0] == 503
        assert threading.active_count() <= threads_before
        assert capped_rest.open_connections == CAP
    finally:
        for connection in flood + held:
            connection.close()


class FromAddress(Connection):
    """A raw connection from another loopback address (Linux answers all of 127/8), another
    client as the server counts them."""

    def __init__(self, rest: RestServer, source: str):
        self.sock = socket.create_connection(("127.0.0.1", rest.port), timeout=60,
                                             source_address=(source, 0))
        self.stream = self.sock.makefile("rb")


@pytest.fixture
def per_client_rest(server):
    """A REST front end taking 4 connections, at most CAP from one address."""
    rest = RestServer(("127.0.0.1", 0), server.core, 1 << 20, max_connections=4,
                      max_connections_per_client=CAP)
    rest.start()
    yield rest
    rest.stop()


def test_one_client_past_its_cap_is_a_503_while_others_are_served(per_client_rest,
                                                                  tiny_exports):
    """A slowloris from one address used to hold every slot: now it holds CAP of them, its
    next connection is refused like one past the global cap (no thread added), and another
    client and the held connections are still served."""
    rest = per_client_rest
    held = [idle(rest) for _ in range(CAP)]
    try:
        threads_before = threading.active_count()
        refused = connect(rest)
        status, headers, payload = predict(refused, good_body(tiny_exports))
        assert status == 503, payload
        assert headers["connection"] == "close" and headers["retry-after"] == "1"
        assert payload["error"] == (
            f"Too many connections from this client: this server takes {CAP} at once from "
            "one address (--rest-max-connections-per-client); retry later")
        assert refused.closed_by_server()
        refused.close()
        assert threading.active_count() <= threads_before
        assert rest.connections_from("127.0.0.1") == CAP and rest.open_connections == CAP
        other = FromAddress(rest, "127.0.0.2")
        try:
            status, _, payload = predict(other, good_body(tiny_exports))
            assert status == 200, payload
        finally:
            other.close()
        status, _, payload = predict(held[0], good_body(tiny_exports))  # a holder is served
        assert status == 200, payload
    finally:
        held.pop().close()
    wait_until(lambda: rest.connections_from("127.0.0.1") == CAP - 1)
    served = connect(rest)  # the freed slot serves this address again
    try:
        status, _, payload = predict(served, good_body(tiny_exports))
        assert status == 200, payload
    finally:
        served.close()
        for connection in held:
            connection.close()
    wait_until(lambda: rest.open_connections == 0)
    assert rest.connections_from("127.0.0.1") == 0 and not rest._per_client


def test_the_per_client_cap_is_off_unless_set():
    """Behind a proxy every connection has one address: a default cap of 32 cut a server's 256
    slots to 32 (a review's 33rd connection through one address got a 503)."""
    assert ServerOptions().rest_max_connections_per_client is None
    assert connections_per_client(None, 256) == 256
    # checked, not rewritten: another global cap through dataclasses.replace still works
    assert dataclasses.replace(ServerOptions(), rest_max_connections=8).rest_max_connections == 8
    assert ServerOptions(rest_max_connections=8,
                         rest_max_connections_per_client=3).rest_max_connections_per_client == 3


@pytest.mark.parametrize("value", [0, 9, 2.5, True])
def test_the_per_client_cap_is_checked_with_its_flag_and_value(value):
    with pytest.raises(ServingError, match=(
            rf"^--rest-max-connections-per-client \(rest_max_connections_per_client\) = "
            rf"{value!r} must be an integer from 1 to --rest-max-connections = 8")):
        ServerOptions(rest_max_connections=8, rest_max_connections_per_client=value)


def test_the_per_client_flag_is_checked_with_its_name_and_value(capsys, tmp_path):
    from tfmmrec.cli import build_parser, main

    parser = build_parser()
    args = parser.parse_args(["serve", "--model-base-path", "m",
                              "--rest-max-connections-per-client", "5"])
    assert args.rest_max_connections_per_client == 5
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--model-base-path", "m",
                           "--rest-max-connections-per-client", "0"])
    assert ("argument --rest-max-connections-per-client: 0 is below the minimum 1"
            in capsys.readouterr().err)
    assert main(["serve", "--model-base-path", str(tmp_path), "--rest-max-connections", "8",
                 "--rest-max-connections-per-client", "9"]) != 0
    assert ("error: --rest-max-connections-per-client (rest_max_connections_per_client) = 9 "
            "must be an integer from 1 to --rest-max-connections = 8" in capsys.readouterr().err)


def test_the_cap_and_budget_are_checked_with_their_names():
    with pytest.raises(ServingError, match="rest_max_connections=0 must be at least 1"):
        ServerOptions(rest_max_connections=0)
    with pytest.raises(ServingError, match="rest_body_budget=2048 is smaller than "
                                           "max_request_bytes=4096"):
        ServerOptions(max_request_bytes=4096, rest_body_budget=2048)


def test_server_options_reach_the_rest_port(tiny_exports, tmp_path):
    from tests.serving.conftest import install_version
    from tfmmrec.serving.server import ModelServer

    install_version(tiny_exports.brute_force, tmp_path / MODEL, 1)
    options = ServerOptions(port=0, rest_port=0, warmup=False, max_request_bytes=4096,
                            rest_max_connections=3, rest_body_budget=3 * 4096,
                            rest_max_connections_per_client=2)
    with ModelServer.for_base_path(tmp_path / MODEL, options) as served:
        assert served._rest.max_connections == 3
        assert served._rest.max_connections_per_client == 2
        assert served._rest.budget.limit == 3 * 4096
