"""The REST port under slow, concurrent or broken uploads, seen from raw sockets: a body must
arrive within ``_Handler.body_timeout`` in all (408), the bodies being read or held at once fit
the server's budget (503 at once past it), a body shorter than its Content-Length is a 400, the
standard library's own errors answer JSON, and a client that hangs up costs a debug line."""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
from types import SimpleNamespace

import pytest

from tests.serving.conftest import MODEL, rest_predict
from tests.serving.test_rest_http import Connection, post_head
from tfmmrec.serving.client import ServingClient, ServingRequestError
from tfmmrec.serving.rest import RestServer, _Handler

LIMIT = 4096  # max_request_bytes of the budget test server
BUDGET = 2 * LIMIT


def wait_until(condition, seconds: float = 10.0) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.02)


def good_body(tiny_exports) -> bytes:
    return json.dumps({"inputs": {"user_id": tiny_exports.user_ids[:1]}}).encode()


@pytest.fixture
def budget_rest(server):
    """A second REST front end over the session server's core: max_request_bytes=LIMIT and a
    budget of two such bodies."""
    rest = RestServer(("127.0.0.1", 0), server.core, LIMIT, body_budget=BUDGET)
    rest.start()
    yield rest
    rest.stop()


def connect(rest: RestServer) -> Connection:
    return Connection(SimpleNamespace(rest_port=rest.port))


def hold(rest: RestServer, size: int) -> Connection:
    """A connection whose Content-Length body of ``size`` bytes is reserved but never sent."""
    before = rest.budget.in_use
    held = connect(rest)
    held.send(post_head({"Content-Length": str(size)}) + b"{")
    wait_until(lambda: rest.budget.in_use == before + size)
    return held


# -- (1a) a total deadline per body ----------------------------------------------------------
@pytest.mark.usefixtures("still_serving")
def test_a_body_that_stops_coming_is_408_after_body_timeout(server, monkeypatch):
    monkeypatch.setattr(_Handler, "body_timeout", 1)
    connection = Connection(server)
    try:
        connection.send(post_head({"Content-Length": "1000"}) + b'{"inputs"')
        start = time.monotonic()
        status, headers, payload = connection.response()
        assert time.monotonic() - start < 5
        assert status == 408, payload
        assert payload["error"] == ("Request body incomplete after 1 s, the limit for sending "
                                    "one body (9 of 1000 bytes received); send it at once")
        assert headers["connection"] == "close" and connection.closed_by_server()
    finally:
        connection.close()
    wait_until(lambda: server._rest.budget.in_use == 0)


def test_a_keep_alive_connection_keeps_its_idle_timeout_after_a_body(server, tiny_exports,
                                                                     monkeypatch):
    """Each body read is bounded by the body's time left; the socket's own timeout is back
    afterwards (for the answer, and for the next request on the connection)."""
    monkeypatch.setattr(_Handler, "body_timeout", 1)
    connection = Connection(server)
    body = good_body(tiny_exports)
    try:
        for _ in range(2):
            connection.send(post_head({"Content-Length": str(len(body))}) + body)
            status, headers, payload = connection.response()
            assert status == 200, payload
            assert headers.get("connection") != "close"
            time.sleep(1.5)  # past the first body's deadline
    finally:
        connection.close()


def drip(sock: socket.socket, stop: threading.Event, data: bytes = b" ") -> None:
    """One byte every 0.2 s: each read is well within the per-read timeout."""
    while not stop.wait(0.2):
        try:
            sock.sendall(data)
        except OSError:
            return


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize("chunked", [False, True], ids=["content_length", "chunked"])
def test_a_body_dripping_in_is_408_after_body_timeout_in_all(server, monkeypatch, chunked):
    """The 60 s timeout used to be per read: a byte every 20 s kept 60 MB resident forever."""
    monkeypatch.setattr(_Handler, "body_timeout", 1)
    head = ({"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": "100000"})
    _, payload = dripped_408(server, post_head(head) + (b"10000\r\n" if chunked else b""))
    assert payload["error"].startswith("Request body incomplete after 1 s, the limit")
    assert " of 100000 bytes" in payload["error"] or chunked


def dripped_408(server, start: bytes, data: bytes = b" ") -> tuple[dict, dict]:
    """Send ``start``, then ``data`` a byte every 0.2 s: the answer, a 408 within 5 s (the
    handler's timeouts set to 1 s), as ``(headers, payload)``."""
    connection = Connection(server)
    stop = threading.Event()
    connection.send(start)
    dripper = threading.Thread(target=drip, args=(connection.sock, stop, data))
    dripper.start()
    try:
        began = time.monotonic()
        status, headers, payload = connection.response()
        assert time.monotonic() - began < 5
        assert status == 408, payload
        return headers, payload
    finally:
        stop.set()
        dripper.join()
        connection.close()


@pytest.mark.usefixtures("still_serving")
def test_a_request_head_dripping_in_is_408_after_head_timeout_in_all(server, monkeypatch,
                                                                     tiny_exports):
    """The head's timeout was per socket read: a header byte every 15 s held a connection,
    and its slot, for as long as the client liked (240 s in a review, then answered 200)."""
    monkeypatch.setattr(_Handler, "head_timeout", 1)
    # in a header, and in the request line itself (which the answer's log line has not got)
    for start in (b"POST /v1/models/x:predict HTTP/1.1\r\nHost: x\r\nX-Slow: ", b"POST /v1/x"):
        headers, payload = dripped_408(server, start, b"a")
        assert payload["error"] == ("Request line and headers incomplete after 1 s, the limit "
                                    "for sending them; send them at once")
        assert headers["connection"] == "close"
    # an idle keep-alive connection still waits its own timeout for the next request's head
    connection = Connection(server)
    body = good_body(tiny_exports)
    try:
        connection.send(post_head({"Content-Length": str(len(body))}) + body)
        assert connection.response()[0] == 200
        time.sleep(1.5)
        connection.send(post_head({"Content-Length": str(len(body))}) + body)
        assert connection.response()[0] == 200
    finally:
        connection.close()


# -- (1b) a budget of body bytes read or held at once ----------------------------------------
def test_an_announced_body_holds_what_arrived_and_one_read_not_its_length(budget_rest,
                                                                          tiny_exports,
                                                                          monkeypatch):
    """Reserving a body's whole Content-Length before reading let four connections that
    announced 64 MB and sent one byte hold the default budget (every other POST a 503)."""
    from tfmmrec.serving import rest

    monkeypatch.setattr(rest, "_READ_SIZE", 256)
    stalled = [connect(budget_rest) for _ in range(4)]  # 4 x LIMIT announced: twice BUDGET
    try:
        for connection in stalled:
            connection.send(post_head({"Content-Length": str(LIMIT)}) + b"{")
        wait_until(lambda: budget_rest.budget.in_use == 4 * (1 + 256))
        status, payload = rest_predict(SimpleNamespace(rest_port=budget_rest.port),
                                       json.loads(good_body(tiny_exports)))
        assert status == 200, payload
    finally:
        for connection in stalled:
            connection.close()
    wait_until(lambda: budget_rest.budget.in_use == 0)


def test_a_body_past_the_budget_is_503_at_once_and_the_budget_comes_back(budget_rest,
                                                                         tiny_exports):
    held = [hold(budget_rest, LIMIT), hold(budget_rest, LIMIT)]
    refused = connect(budget_rest)
    try:
        body = good_body(tiny_exports)
        start = time.monotonic()
        refused.send(post_head({"Content-Length": str(len(body))}) + body)
        status, headers, payload = refused.response()
        assert time.monotonic() - start < 2
        assert status == 503, payload
        assert payload["error"] == (
            f"Request body of {len(body)} bytes refused: the REST server's budget of {BUDGET} "
            "bytes for request bodies being received at once is in use (by default 4 x "
            "--max-request-bytes); retry shortly")
        assert headers["connection"] == "close"
    finally:
        refused.close()
        for connection in held:
            connection.close()  # the bodies end short: each answered 400, its bytes released
    wait_until(lambda: budget_rest.budget.in_use == 0)
    status, payload = rest_predict(SimpleNamespace(rest_port=budget_rest.port),
                                   json.loads(good_body(tiny_exports)))
    assert status == 200, payload


def test_chunked_bodies_reserve_chunk_by_chunk(budget_rest):
    held = [hold(budget_rest, LIMIT), hold(budget_rest, LIMIT * 6 // 10)]
    chunked = connect(budget_rest)
    try:
        size = LIMIT * 3 // 10
        chunk = f"{size:x}\r\n".encode() + b" " * size + b"\r\n"
        chunked.send(post_head({"Transfer-Encoding": "chunked"}) + chunk)
        wait_until(lambda: budget_rest.budget.in_use == LIMIT * 16 // 10 + size)
        chunked.send(chunk)  # within max_request_bytes, but 2.2 x LIMIT in all > BUDGET
        status, _, payload = chunked.response()
        assert status == 503, payload
        assert payload["error"].startswith(f"Chunk of {size} bytes refused: the REST server's "
                                           f"budget of {BUDGET} bytes")
    finally:
        chunked.close()
        for connection in held:
            connection.close()
    wait_until(lambda: budget_rest.budget.in_use == 0)


def test_the_client_says_a_503_is_a_busy_server(budget_rest, tiny_exports):
    held = [hold(budget_rest, LIMIT), hold(budget_rest, LIMIT)]
    try:
        with ServingClient(f"127.0.0.1:{budget_rest.port}", MODEL, rest=True,
                           timeout=30) as client, pytest.raises(ServingRequestError) as raised:
            client.recommend(tiny_exports.user_ids[:1])
    finally:
        for connection in held:
            connection.close()
    assert raised.value.code == "UNAVAILABLE"
    assert "the server is busy" in str(raised.value)
    assert "is `tfmmrec serve` or tensorflow_model_server running there?" not in str(raised.value)


def test_a_budget_smaller_than_one_body_is_refused(server):
    from tfmmrec.errors import ServingError

    with pytest.raises(ServingError, match="body_budget=100 is smaller than max_request_bytes"):
        RestServer(("127.0.0.1", 0), server.core, 1024, body_budget=100)


# -- (6) a body shorter than its Content-Length ----------------------------------------------
@pytest.mark.usefixtures("still_serving")
def test_a_body_shorter_than_its_content_length_is_a_400(server, tiny_exports):
    connection = Connection(server)
    try:
        body = good_body(tiny_exports)[:22]
        connection.send(post_head({"Content-Length": "500"}) + body)
        connection.sock.shutdown(socket.SHUT_WR)
        status, headers, payload = connection.response()
        assert status == 400, payload
        assert payload["error"] == ("Request body ended after 22 of 500 bytes (its "
                                    "Content-Length)")
        assert headers["connection"] == "close"
    finally:
        connection.close()


# -- (7c) the standard library's own errors, in JSON -----------------------------------------
def raw_answer(server, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and the whole rest of the stream (the server closes after an error)."""
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as sock:
        sock.sendall(data)
        stream = sock.makefile("rb")
        status = int(stream.readline().split()[1])
        headers = {}
        while (line := stream.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, stream.read()


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize(("request_bytes", "status", "error"), [
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414,
     "Request-URI Too Long (the request line is longer than the limit of 65536 bytes)"),
    (b"GET /v1/models/x HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431,
     "Line too long: got more than 65536 bytes when reading header line"),
    (b"GET /v1/models/x HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101))
     + b"\r\n", 431, "Too many headers: got more than 100 headers"),
    (b"PUT /v1/models/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 501,
     "Unsupported method ('PUT') (tfmmrec serve's REST API takes GET and POST)"),
    (b"DELETE /v1/models/x HTTP/1.1\r\n\r\n", 501,
     "Unsupported method ('DELETE') (tfmmrec serve's REST API takes GET and POST)"),
    (b"X" * 5000 + b" /v1/models/x HTTP/1.1\r\n\r\n", 501, "Unsupported method ('XXXXX"),
], ids=["414_request_line", "431_header_line", "431_header_count", "501_put", "501_delete",
        "501_long_method"])
def test_standard_library_errors_are_json(server, request_bytes, status, error):
    got, headers, body = raw_answer(server, request_bytes)
    assert (got, headers["content-type"]) == (status, "application/json")
    assert headers["connection"] == "close"
    message = json.loads(body)["error"]
    assert message.startswith(error), message
    assert len(message) < 400


def test_a_garbage_request_line_gets_a_json_body(server):
    """http.server answers a one-word request line HTTP/0.9-style: the body alone."""
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as sock:
        sock.sendall(b"GARBAGE" + b"x" * 5000 + b"\r\n\r\n")
        message = json.loads(sock.makefile("rb").read())["error"]
    assert message.startswith("Bad request syntax ('GARBAGExxx") and len(message) < 400


def test_head_gets_json_headers_and_no_body(server):
    status, headers, body = raw_answer(server, b"HEAD /v1/models/x HTTP/1.1\r\n\r\n")
    assert (status, headers["content-type"], body) == (501, "application/json", b"")


# -- (7d) a client that leaves before its answer ---------------------------------------------
def reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a client killed mid-request does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.usefixtures("still_serving")
def test_a_client_gone_before_its_answer_is_a_debug_line_not_a_traceback(server, tiny_exports,
                                                                          monkeypatch, capfd,
                                                                          caplog):
    api = server._rest.api
    answered = threading.Event()
    handle = api.handle

    def slow_handle(*args):
        time.sleep(0.5)  # the client resets meanwhile
        try:
            return handle(*args)
        finally:
            answered.set()

    monkeypatch.setattr(api, "handle", slow_handle)
    caplog.set_level(logging.DEBUG, logger="tfmmrec.serving.rest")
    sock = socket.create_connection(("127.0.0.1", server.rest_port), timeout=30)
    body = good_body(tiny_exports)
    sock.sendall(post_head({"Content-Length": str(len(body))}) + body)
    time.sleep(0.1)
    reset(sock)
    assert answered.wait(30)
    wait_until(lambda: any("left before its answer" in r.getMessage() for r in caplog.records))
    monkeypatch.undo()
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.usefixtures("still_serving")
def test_a_reset_while_the_body_is_read_is_no_traceback(server, capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="tfmmrec.serving.rest")
    sock = socket.create_connection(("127.0.0.1", server.rest_port), timeout=30)
    sock.sendall(post_head({"Content-Length": "1000"}) + b"{")
    wait_until(lambda: server._rest.budget.in_use >= 1000)
    reset(sock)
    wait_until(lambda: server._rest.budget.in_use == 0)
    wait_until(lambda: any("connection ended" in r.getMessage() for r in caplog.records))
    assert "Traceback" not in capfd.readouterr().err
