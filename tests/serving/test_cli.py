"""``tfmmrec serve`` as a real subprocess and ``tfmmrec query`` against it (and against nothing)."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.serving.conftest import MODEL, free_port, install_version
from tfmmrec.cli import main
from tfmmrec.serving.client import ServingClient, ServingRequestError

READY = re.compile(r"gRPC 127\.0\.0\.1:(\d+), REST 127\.0\.0\.1:(\d+)")


def read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


@pytest.fixture(scope="module")
def serve_process(tiny_exports, tmp_path_factory):
    """``tfmmrec serve`` on ports the OS picks; yields (gRPC port, REST port, process)."""
    base = tmp_path_factory.mktemp("cli") / MODEL
    install_version(tiny_exports.brute_force, base, 1)
    process = subprocess.Popen(
        [sys.executable, "-m", "tfmmrec.cli", "serve", "--model-base-path", str(base),
         "--port", "0", "--rest-api-port", "0", "--poll-seconds", "0", "--no-warmup"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True).start()
    output, ports, deadline = [], None, time.monotonic() + 120
    try:
        while ports is None:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                pytest.fail("tfmmrec serve exited early:\n" + "".join(output))
            output.append(line)
            if match := READY.search(line):
                ports = int(match[1]), int(match[2])
        yield ports[0], ports[1], process, lines
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def test_query_command_over_grpc_and_rest(serve_process, tiny_exports, capsys):
    grpc_port, rest_port, _, _ = serve_process
    user = tiny_exports.user_ids[0]
    assert main(["query", "--target", f"127.0.0.1:{grpc_port}", "--model", MODEL,
                 "--user", user, "--k", "3", "--json"]) == 0
    grpc_rows = json.loads(capsys.readouterr().out)
    assert main(["query", "--target", f"127.0.0.1:{rest_port}", "--rest", "--model", MODEL,
                 "--user", user, "--k", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == grpc_rows
    assert len(grpc_rows[0]["item_ids"]) == 3
    assert main(["query", "--target", f"127.0.0.1:{grpc_port}", "--model", MODEL,
                 "--text", tiny_exports.texts[0], "--k", "2"]) == 0
    assert "  1  " in capsys.readouterr().out
    assert main(["query", "--target", f"127.0.0.1:{grpc_port}", "--model", MODEL,
                 "--status"]) == 0
    assert capsys.readouterr().out.strip() == "version 1: AVAILABLE"


def test_query_command_reports_server_errors_without_traceback(serve_process, capsys):
    grpc_port, _, _, _ = serve_process
    code = main(["query", "--target", f"127.0.0.1:{grpc_port}", "--model", "nope",
                 "--user", "u1"])
    assert code == 2
    error = capsys.readouterr().err
    assert "Servable not found for request: Latest(nope)" in error
    assert "Traceback" not in error


def test_sigterm_stops_the_server_cleanly(serve_process):
    grpc_port, _, process, lines = serve_process
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    rest = []
    while (line := lines.get(timeout=10)) is not None:
        rest.append(line)
    assert any("stopped" in line for line in rest)
    with ServingClient(f"127.0.0.1:{grpc_port}", MODEL, timeout=5) as client, \
            pytest.raises(ServingRequestError) as raised:
        client.status()
    assert raised.value.code == "UNAVAILABLE"


@pytest.mark.parametrize("rest", [False, True], ids=["grpc", "rest"])
def test_connection_refused_says_how_to_fix(rest, capsys):
    port = free_port()
    args = ["query", "--target", f"127.0.0.1:{port}", "--user", "u1", "--timeout", "5"]
    assert main([*args, "--rest"] if rest else args) == 2
    error = capsys.readouterr().err
    assert f"cannot reach 127.0.0.1:{port}" in error
    assert "is `tfmmrec serve` or tensorflow_model_server running there?" in error


def test_deadline_exceeded_is_reported_as_such(server, tiny_exports):
    with ServingClient(f"127.0.0.1:{server.port}", MODEL, timeout=1e-4) as client, \
            pytest.raises(ServingRequestError, match="raise --timeout") as raised:
        client.query_audio([tiny_exports.audio] * 8, k=3)
    assert raised.value.code == "DEADLINE_EXCEEDED"


def test_serve_rejects_a_missing_base_path(tmp_path, capsys):
    assert main(["serve", "--model-base-path", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("--port", "70000", "70000 is not a port: expected 0 (any free port) to 65535"),
    ("--rest-api-port", "-5", "-5 is not a port"),
    ("--port", "eighty", "'eighty' is not an integer"),
    ("--num-threads", "-1", "-1 is below the minimum 0"),
    ("--max-request-bytes", "0", "0 is below the minimum 1"),
])
def test_serve_refuses_out_of_range_numbers_before_binding(tmp_path, capsys, option, value,
                                                           expected):
    """A socket takes a port modulo 2¹⁶: 70000 must not quietly listen on 4464."""
    with pytest.raises(SystemExit) as info:
        main(["serve", "--model-base-path", str(tmp_path), option, value])
    assert info.value.code == 2
    assert f"argument {option}: {expected}" in capsys.readouterr().err


@pytest.mark.parametrize("rest", [False, True], ids=["grpc", "rest"])
def test_query_without_k_gets_the_exports_default_k(server, tiny_exports, tmp_path, rest,
                                                     capsys):
    """No --k: k stays out of the request, so the signature's default applies (a catalogue cut
    below export.k has a smaller default; a client-side k=10 would exceed its max_k)."""
    port = server.rest_port if rest else server.port
    image = tmp_path / "query.png"
    image.write_bytes(tiny_exports.image)
    base = ["query", "--target", f"127.0.0.1:{port}", "--model", MODEL, "--json",
            *(["--rest"] if rest else [])]
    for what in (["--text", tiny_exports.texts[0]], ["--image", str(image)],
                 ["--user", tiny_exports.user_ids[0]]):
        assert main([*base, *what]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert len(rows[0]["item_ids"]) == tiny_exports.default_k != 10, what
    with ServingClient(f"127.0.0.1:{port}", MODEL, rest=rest, timeout=30) as client:
        assert client.query_text(tiny_exports.texts[:2])["item_ids"].shape == \
            (2, tiny_exports.default_k)
        assert client.query("text", tiny_exports.texts[:1], k=3)["item_ids"].shape == (1, 3)


def test_rest_query_at_the_grpc_port_is_a_one_line_error(server, capsys):
    """The gRPC port answers an HTTP/1.1 request with HTTP/2 frames: a clean "cannot reach"."""
    code = main(["query", "--rest", "--target", f"127.0.0.1:{server.port}", "--model", MODEL,
                 "--user", "u0000", "--timeout", "10"])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1, error
    assert f"cannot reach 127.0.0.1:{server.port} over REST" in error[0]
    assert "the gRPC port?" in error[0]


def test_rest_query_at_a_non_json_http_server_is_a_one_line_error(capsys):
    """Some other HTTP server on the port (a 200 that is not JSON): no traceback either."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Hello(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args) -> None:
            pass

    with HTTPServer(("127.0.0.1", 0), Hello) as other:
        thread = threading.Thread(target=other.handle_request, daemon=True)
        thread.start()
        code = main(["query", "--rest", "--target", f"127.0.0.1:{other.server_port}",
                     "--user", "u0000", "--timeout", "10"])
        thread.join(timeout=10)
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1, error
    assert "its answer is not JSON" in error[0]


def test_places_no_item_filled_are_left_out_of_printed_results():
    """A catalogue smaller than k plus the excluded items pads with id "" (export.module)."""
    import numpy as np

    from tfmmrec.export.module import MISSING_SCORE
    from tfmmrec.serving.client import format_results, served_items

    result = {"item_ids": np.array([[b"i1", b"i2", b""]]),
              "scores": np.array([[0.5, 0.25, MISSING_SCORE]], np.float32)}
    assert served_items(result, 0) == [("i1", 0.5), ("i2", 0.25)]
    assert format_results(result, ["u1"]).splitlines() == [
        "u1:", "    1  i1                       0.5000", "    2  i2                       0.2500"]
