"""The REST port's HTTP/1.1 framing: chunked bodies, Content-Length checks, pipelining, and
strict JSON out (no NaN/Infinity tokens) — what a raw socket sees, not what urllib smooths over.
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import tensorflow as tf

from tests.serving.conftest import MAX_REQUEST_BYTES, MODEL, rest_predict
from tfmmrec.serving.rest import COLUMNAR, ROW, _dumps, outputs_json

PREDICT = f"/v1/models/{MODEL}:predict"


def chunked(body: bytes, sizes: list[int]) -> bytes:
    """``body`` in chunks of ``sizes`` (the rest in one more), with an extension on the first."""
    out, start = [], 0
    for index, size in enumerate([*sizes, len(body)]):
        piece = body[start:start + size]
        if not piece:
            break
        out.append(f"{len(piece):x}{';ext=1' if index == 0 else ''}\r\n".encode() + piece
                   + b"\r\n")
        start += len(piece)
    return b"".join(out) + b"0\r\n\r\n"


def post_head(headers: dict[str, str], path: str = PREDICT) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(stream) -> tuple[int, dict[str, str], dict]:
    """One HTTP/1.1 response (status, lower-cased headers, JSON body) off a socket file."""
    status_line = stream.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = stream.read(int(headers["content-length"]))
    assert headers.get("content-type") == "application/json", (status_line, body)
    return int(status_line.split()[1]), headers, json.loads(body)


class Connection:
    """A raw keep-alive connection to the REST port."""

    def __init__(self, server):
        self.sock = socket.create_connection(("127.0.0.1", server.rest_port), timeout=60)
        self.stream = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], dict]:
        return read_response(self.stream)

    def closed_by_server(self) -> bool:
        try:
            return self.stream.read(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


@pytest.fixture
def connection(server):
    opened = Connection(server)
    yield opened
    opened.close()


@pytest.mark.usefixtures("still_serving")
def test_chunked_body_is_read_and_a_pipelined_request_still_parses(server, connection,
                                                                   tiny_exports):
    """TF Serving reads chunked bodies; the unread chunks used to become the "next request"."""
    user = tiny_exports.user_ids[0]
    body = json.dumps({"inputs": {"user_id": [user]}}).encode()
    expected = rest_predict(server, {"inputs": {"user_id": [user]}})
    assert expected[0] == 200
    connection.send(post_head({"Transfer-Encoding": "chunked"}) + chunked(body, [7, 5])
                    + f"GET /v1/models/{MODEL} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    status, _, payload = connection.response()
    assert (status, payload) == expected
    status, _, payload = connection.response()
    assert status == 200 and payload["model_version_status"][0]["state"] == "AVAILABLE"


@pytest.mark.usefixtures("still_serving")
def test_chunked_body_past_the_limit_is_413_and_closes(server, connection):
    big = b"x" * (MAX_REQUEST_BYTES // 2 + 1)
    connection.send(post_head({"Transfer-Encoding": "chunked"}) + chunked(big * 2, [len(big)]))
    status, headers, payload = connection.response()
    assert status == 413, payload
    assert "Chunked request body is larger than the limit of" in payload["error"]
    assert "--max-request-bytes" in payload["error"]
    assert headers["connection"] == "close"
    assert connection.closed_by_server()


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize(("head", "body", "status", "fragment"), [
    ({"Transfer-Encoding": "chunked"}, b"zz\r\n{}\r\n0\r\n\r\n", 400,
     'Malformed chunk size "zz"'),
    ({"Transfer-Encoding": "chunked"}, b"2\r\n{}}\r\n0\r\n\r\n", 400,
     "is not followed by CRLF"),
    ({"Transfer-Encoding": "chunked"}, b"-2\r\n{}\r\n0\r\n\r\n", 400, "Malformed chunk size"),
    ({"Transfer-Encoding": "gzip"}, b"{}", 400, "Transfer-Encoding must end with chunked"),
    ({"Transfer-Encoding": "gzip, chunked"}, b"2\r\n{}\r\n0\r\n\r\n", 501,
     "Transfer-Encoding gzip, chunked is not supported"),
    ({"Content-Length": "-5"}, b"", 400, "Invalid Content-Length header: '-5'"),
    ({"Content-Length": "12abc"}, b"", 400, "Invalid Content-Length header: '12abc'"),
    ({"Content-Length": "2, 3"}, b"{}", 400, "Invalid Content-Length header: '2, 3'"),
], ids=["bad_hex", "size_mismatch", "negative_chunk", "not_chunked_last", "gzip_chunked",
        "negative_length", "junk_length", "conflicting_lengths"])
def test_malformed_framing_is_a_4xx_json_answer_and_closes(connection, head, body, status,
                                                           fragment):
    """The body's end is unknown: answer in JSON and close rather than parse its bytes as the
    next request."""
    connection.send(post_head(head) + body)
    got, headers, payload = connection.response()
    assert (got, fragment in payload["error"]) == (status, True), payload
    assert headers["connection"] == "close"
    assert connection.closed_by_server()


@pytest.mark.usefixtures("still_serving")
def test_content_length_over_the_limit_is_still_413(connection):
    connection.send(post_head({"Content-Length": str(10 * MAX_REQUEST_BYTES)}))
    status, _, payload = connection.response()
    assert status == 413
    assert f"Request body of {10 * MAX_REQUEST_BYTES} bytes is larger" in payload["error"]


@pytest.mark.usefixtures("still_serving")
def test_integer_with_too_many_digits_is_a_400(server, tiny_exports):
    user = json.dumps(tiny_exports.user_ids[0])
    body = f'{{"signature_name":"recommend","inputs":{{"user_id":[{user}],"k":{"1" * 5000}}}}}'
    body = body.encode()
    status, payload = rest_predict(server, body)
    assert status == 400, payload
    assert payload["error"] == ("JSON Parse error: a number has more than 4300 digits; no "
                                "tensor dtype holds it (int64 has at most 19)")


def test_non_finite_floats_are_written_as_null():
    """TF Serving writes bare NaN/Infinity tokens; strict JSON parsers reject those."""
    scores = tf.make_tensor_proto(np.array([[1.5, -np.inf], [np.nan, np.inf]], np.float32))
    ids = tf.make_tensor_proto(np.array([[b"a", b"b"], [b"c", b"d"]], dtype=object))
    for request_format, expected in [
        (COLUMNAR, {"outputs": {"item_ids": [["a", "b"], ["c", "d"]],
                                "scores": [[1.5, None], [None, None]]}}),
        (ROW, {"predictions": [{"item_ids": ["a", "b"], "scores": [1.5, None]},
                               {"item_ids": ["c", "d"], "scores": [None, None]}]}),
    ]:
        text = _dumps(outputs_json({"scores": scores, "item_ids": ids}, request_format))
        assert b"NaN" not in text and b"Infinity" not in text
        assert json.loads(text, parse_constant=pytest.fail) == expected
    assert _dumps({"a": [1.0, float("nan")], "b": {"c": (float("-inf"),)}}) == \
        b'{"a":[1.0,null],"b":{"c":[null]}}'
