"""``tfmmrec serve`` as a real subprocess and ``tfmmrec query`` against it (and against nothing)."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import wave

import numpy as np
import pytest

from tests.conftest import SHARED
from tests.serving.conftest import MODEL, free_port, install_version
from tfmmrec import modalities
from tfmmrec.cli import main
from tfmmrec.errors import ServingError
from tfmmrec.export.loader import padded
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
    assert grpc_rows[0]["known_user"] is True
    assert main(["query", "--target", f"127.0.0.1:{grpc_port}", "--model", MODEL,
                 "--user", user, "--user", "nobody-at-all", "--k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{user}:"
    assert "nobody-at-all (not a user the model knows: the cold-start list):" in lines
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


@pytest.mark.parametrize("rest", [False, True], ids=["grpc", "rest"])
def test_query_text_that_is_not_utf8_is_one_line_either_way(serve_process, capsys, rest):
    """``--text $'caf\\xe9'``: the shell passes a byte that is not UTF-8, which Python holds as
    a lone surrogate; gRPC's request builder raised a traceback on it."""
    grpc_port, rest_port, _, _ = serve_process
    port, flags = (rest_port, ["--rest"]) if rest else (grpc_port, [])
    code = main(["query", "--target", f"127.0.0.1:{port}", *flags, "--model", MODEL,
                 "--text", "caf\udce9"])
    error = capsys.readouterr().err
    assert code == 2 and "Traceback" not in error, error
    assert "not valid UTF-8 text (a lone surrogate" in error
    assert len(error.strip().splitlines()) == 1


AUDIO_SAMPLES = SHARED / "data" / "audio-samples"  # real clips, when ../shared exists


def test_query_audio_takes_the_formats_the_catalogue_accepts(serve_process, tmp_path, capsys):
    """The signature decodes 16-bit PCM WAV; ``--audio`` with an 8-bit WAV (or FLAC, Ogg,
    MP3...) was refused as "corrupt or truncated WAV". The client converts it, and the
    results are those of the same clip sent as 16-bit PCM WAV."""
    grpc_port, _, _, _ = serve_process
    query = ["query", "--target", f"127.0.0.1:{grpc_port}", "--model", MODEL, "--k", "3",
             "--json", "--audio"]
    eight_bit = tmp_path / "clip8.wav"
    with wave.open(str(eight_bit), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(11025)
        out.writeframes((128 + 90 * np.sin(np.arange(6000) / 7)).astype(np.uint8).tobytes())
    assert main([*query, str(eight_bit)]) == 0, capsys.readouterr().err
    rows = json.loads(capsys.readouterr().out)
    as_pcm16 = tmp_path / "clip16.wav"
    as_pcm16.write_bytes(modalities.get("audio").request_values(eight_bit)[0])
    assert main([*query, str(as_pcm16)]) == 0
    assert [r["item_ids"] for r in json.loads(capsys.readouterr().out)] == \
        [r["item_ids"] for r in rows]
    assert len(rows[0]["item_ids"]) == 3
    clips = [p for p in sorted(AUDIO_SAMPLES.glob("*")) if p.suffix in (".flac", ".mp3", ".ogg")
             ] if AUDIO_SAMPLES.is_dir() else []
    for clip in clips:
        assert main([*query, str(clip)]) == 0, (clip, capsys.readouterr().err)
        assert len(json.loads(capsys.readouterr().out)[0]["item_ids"]) == 3


@pytest.mark.parametrize(("what", "buffered"), [(["--embed", "USER"], True),
                                                (["--metadata"], False)],
                         ids=["embed-buffered", "metadata-unbuffered"])
def test_query_output_piped_into_a_reader_that_left_is_no_traceback(serve_process, tiny_exports,
                                                                    what, buffered):
    """``tfmmrec query --embed u1 | head -c 10``: the reader closing the pipe printed a
    BrokenPipeError traceback. Now: nothing on stderr, the shell's SIGPIPE status (141),
    whether the write fails at once (unbuffered) or at the final flush (block-buffered)."""
    grpc_port, _, _, _ = serve_process
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    what = [tiny_exports.user_ids[0] if w == "USER" else w for w in what]
    read, write = os.pipe()
    os.close(read)  # the reader left before the first byte
    try:
        result = subprocess.run(
            [sys.executable, "-m", "tfmmrec.cli", "query", "--target", f"127.0.0.1:{grpc_port}",
             "--model", MODEL, *what], stdout=write, stderr=subprocess.PIPE, text=True,
            env=env, timeout=300)
    finally:
        os.close(write)
    assert result.returncode == 141, result.stderr
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
    assert "Exception ignored" not in result.stderr


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
    ("--rest-max-connections", "0", "0 is below the minimum 1"),
    ("--rest-body-budget", "-1", "-1 is below the minimum 1"),
    ("--poll-seconds", "inf", "inf is not a poll interval: expected 0 (never) to 86400"),
    ("--poll-seconds", "-1", "-1 is not a poll interval"),
    ("--poll-seconds", "nan", "nan is not a poll interval"),
    ("--poll-seconds", "soon", "'soon' is not a number"),
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


def test_grpc_query_at_the_rest_port_suggests_rest(server, capsys):
    """The REST port answers gRPC's HTTP/2 preface with HTTP/1.1: the server runs, so the
    message points at --rest instead of asking whether it does."""
    code = main(["query", "--target", f"127.0.0.1:{server.rest_port}", "--model", MODEL,
                 "--user", "u0000", "--timeout", "10"])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1, error
    assert f"cannot reach 127.0.0.1:{server.rest_port} over gRPC" in error[0]
    assert "something answers HTTP/1.x there, not gRPC: the REST port? Query it with --rest" \
        in error[0]
    assert "running there?" not in error[0]


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
    from tfmmrec.export.module import MISSING_SCORE
    from tfmmrec.serving.client import format_results, served_items

    result = {"item_ids": np.array([[b"i1", b"i2", b""]]),
              "scores": np.array([[0.5, 0.25, MISSING_SCORE]], np.float32)}
    assert served_items(result, 0) == [("i1", 0.5), ("i2", 0.25)]
    assert format_results(result, ["u1"]).splitlines() == [
        "u1:", "    1  i1                       0.5000", "    2  i2                       0.2500"]


def test_a_two_stage_answer_prints_both_stages_scores():
    from tfmmrec.serving.client import format_results

    result = {"item_ids": np.array([[b"i2", b"i1"]]),
              "scores": np.array([[2.0, 1.0]], np.float32),
              "retrieval_scores": np.array([[0.25, 0.5]], np.float32)}
    assert format_results(result, ["u1"]).splitlines() == [
        "u1: (item, ranking score, retrieval score)",
        "    1  i2                       2.0000 0.2500",
        "    2  i1                       1.0000 0.5000"]


# --- defaults, argument checks and session/exclusion queries ----------------------------------


@pytest.fixture
def dialled(monkeypatch):
    """``tfmmrec query`` with a client that records where it would dial, and dials nothing."""
    calls: list[tuple[str, bool]] = []

    def fake_client(target, model, **options):
        calls.append((target, options["rest"]))
        raise ServingError("not dialled")

    monkeypatch.setattr("tfmmrec.serving.client.ServingClient", fake_client)
    return calls


@pytest.mark.parametrize(("args", "expected"), [
    ([], ("127.0.0.1:8500", False)),
    (["--rest"], ("127.0.0.1:8501", True)),
    (["--target", "localhost"], ("localhost:8500", False)),
    (["--target", "localhost", "--rest"], ("localhost:8501", True)),
    (["--target", "http://serving.local:9001/", "--rest"], ("serving.local:9001", True)),
    (["--target", "[::1]"], ("[::1]:8500", False)),
])
def test_query_dials_the_default_port_of_its_protocol(dialled, capsys, args, expected):
    """No --target, or a host alone: 8500 for gRPC, 8501 with --rest (what `tfmmrec serve`
    listens on); gRPC itself would dial 443 for a host without a port."""
    assert main(["query", *args, "--user", "u01"]) == 2
    assert dialled == [expected]
    assert "not dialled" in capsys.readouterr().err


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("--target", "host:abc", "'host:abc': port 'abc' is not a number from 1 to 65535"),
    ("--target", "host:70000", "'host:70000': port '70000' is not a number from 1 to 65535"),
    ("--target", "host:0", "'host:0': port '0' is not a number from 1 to 65535"),
    ("--target", "host:", "'host:': port '' is not a number from 1 to 65535"),
    ("--target", ":8500", "':8500' is not host:port"),
    ("--timeout", "0", "0 is not a positive number of seconds"),
    ("--timeout", "-3", "-3 is not a positive number of seconds"),
    ("--timeout", "nan", "nan is not a positive number of seconds"),
    ("--timeout", "inf", "inf is not a positive number of seconds"),
    ("--timeout", "soon", "'soon' is not a number of seconds"),
])
def test_query_refuses_a_malformed_target_or_timeout_naming_it(dialled, capsys, option, value,
                                                               expected):
    """A target with a bad port, or a timeout that is not a positive number of seconds, is a
    usage error naming the option and value; nothing is dialled."""
    with pytest.raises(SystemExit) as info:
        main(["query", option, value, "--user", "u01"])
    assert info.value.code == 2
    assert f"argument {option}: {expected}" in capsys.readouterr().err
    assert not dialled


@pytest.mark.parametrize(("command", "expected"), [
    ("query", ["--target HOST[:PORT] the server's gRPC port, or REST port with --rest (default: "
               "127.0.0.1:8500, with --rest 127.0.0.1:8501; a host alone gets that port)",
               "--model MODEL model name on the server (default: tfmmrec)",
               "--timeout TIMEOUT seconds per request, > 0 (default: 10)"]),
    ("serve", ["--port PORT gRPC port (default: 8500; 0: any free port)",
               "--rest-api-port REST_API_PORT REST port (default: 8501; 0: any free port)",
               "(TF Serving's --file_system_poll_wait_seconds; default: 1; 0: never)",
               "more are answered 503 at once (default: 256)"]),
])
def test_help_shows_the_defaults(capsys, command, expected):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # whatever the terminal width
    for line in expected:
        assert line in text


@pytest.mark.parametrize("busy", ["grpc", "rest"])
def test_serve_on_a_busy_port_fails_before_loading_a_model(tiny_exports, tmp_path, monkeypatch,
                                                          capsys, busy):
    """The ports are bound before the (slow) load and warmup: a busy one fails in a second."""
    from tfmmrec.serving.registry import ModelRegistry

    def no_load(self):
        raise AssertionError("the model was loaded before the ports were bound")

    monkeypatch.setattr(ModelRegistry, "start", no_load)
    install_version(tiny_exports.brute_force, tmp_path / MODEL, 1)
    grpc_port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        held = holder.getsockname()[1]
        ports = ["--port", str(held)] if busy == "grpc" else \
            ["--port", str(grpc_port), "--rest-api-port", str(held)]
        started = time.monotonic()
        assert main(["serve", "--model-base-path", str(tmp_path / MODEL), *ports]) == 2
        assert time.monotonic() - started < 30
    captured = capsys.readouterr()
    assert "serving" not in captured.out + captured.err  # nor the registry's "serving NAME ..."
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    option = "--port" if busy == "grpc" else "--rest-api-port"
    protocol = "gRPC" if busy == "grpc" else "REST"
    assert len(errors) == 1, captured.err
    assert errors[0].startswith(f"error: cannot listen for {protocol} on 127.0.0.1:{held}")
    assert errors[0].endswith(f"pick another {option}")
    if busy == "rest":  # the gRPC port it had bound is free again
        with socket.socket() as again:
            again.bind(("127.0.0.1", grpc_port))


def served_json(args: list[str], capsys) -> list[dict]:
    assert main(["query", *args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def ids_of(result: dict) -> list[str]:
    return [i.decode() for i in result["item_ids"][0] if i]


@pytest.mark.parametrize("rest", [False, True], ids=["grpc", "rest"])
def test_query_sends_sessions_and_exclusions(server, in_process, tiny_exports, rest, capsys):
    """--session (recommend_session, optional --user) and --exclude (every retrieval signature
    but serving_default) answer as the in-process model does, over gRPC and REST."""
    model = in_process[MODEL]
    user = tiny_exports.user_ids[0]
    port = server.rest_port if rest else server.port
    base = ["--target", f"127.0.0.1:{port}", "--model", MODEL, *(["--rest"] if rest else [])]
    top = ids_of(model.recommend([user], k=5))
    session, excluded = top[:2], top[2]

    rows = served_json([*base, "--session", *session, "--k", "4"], capsys)
    assert rows[0]["query"] == {"session_item_ids": session}
    assert rows[0]["item_ids"] == ids_of(model.recommend_session([session], k=4))
    assert rows[0]["unknown_session_items"] == []
    # a session item the catalogue lacks is served without, and now said (a typo went unseen)
    rows = served_json([*base, "--session", *session, "no-such-item", "--k", "4"], capsys)
    assert rows[0]["unknown_session_items"] == ["no-such-item"]
    assert rows[0]["item_ids"] == ids_of(model.recommend_session([session], k=4))
    assert main(["query", *base, "--session", session[0], "no-such-item", "--k", "2"]) == 0
    assert capsys.readouterr().out.startswith(
        f"session {session[0]} no-such-item (not in the catalogue, ignored: no-such-item):\n")

    rows = served_json([*base, "--session", *session, "--user", user, "--k", "4", "--exclude",
                        excluded], capsys)
    expected = model.recommend_session([session], [user], k=4, exclude=[[excluded]])
    assert rows[0]["query"] == {"session_item_ids": session, "user_id": user}
    assert rows[0]["item_ids"] == ids_of(expected) and excluded not in rows[0]["item_ids"]
    assert rows[0]["scores"] == pytest.approx(expected["scores"][0].tolist(), rel=1e-6)

    rows = served_json([*base, "--user", user, "--exclude", excluded], capsys)  # no --k
    assert rows[0]["item_ids"] == ids_of(model.recommend([user], exclude=[[excluded]]))
    assert excluded not in rows[0]["item_ids"]
    assert len(rows[0]["item_ids"]) == tiny_exports.default_k

    text = tiny_exports.texts[0]
    first = served_json([*base, "--text", text, "--k", "3"], capsys)[0]["item_ids"][0]
    rows = served_json([*base, "--text", text, "--k", "3", "--exclude", first], capsys)
    expected = model.call("query_text", text=np.array([text], dtype=object), k=3,
                          exclude_item_ids=padded([[first]]))
    assert rows[0]["item_ids"] == ids_of(expected) and first not in rows[0]["item_ids"]

    assert main(["query", *base, "--session", *session, "--user", user, "--k", "2"]) == 0
    assert capsys.readouterr().out.startswith(f"session {' '.join(session)} (user {user}):\n")


@pytest.mark.parametrize(("args", "expected"), [
    (["--session", "i1", "--text", "jazz"], "--session goes with an optional --user only, not "
                                            "--text"),
    (["--session", "i1", "--user", "u1", "--user", "u2"], "--session is one session: give at "
                                                          "most one --user (got 2: u1, u2)"),
    (["--status", "--exclude", "i1"], "--exclude goes with --user, --session or a --<modality> "
                                      "query, not --status"),
    ([], "nothing to ask: give one of --user, --session, --text"),
])
def test_query_refuses_what_the_signatures_cannot_take(dialled, capsys, args, expected):
    assert main(["query", *args]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[0] == f"error: {expected}" or error[0].startswith(f"error: {expected}"), error
    assert not dialled


def test_serve_refuses_a_body_budget_below_the_request_limit(tmp_path, capsys):
    assert main(["serve", "--model-base-path", str(tmp_path), "--max-request-bytes", "4096",
                 "--rest-body-budget", "2048"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: rest_body_budget=2048 is smaller than max_request_bytes=4096: a body at the "
        "limit could never be read")
