"""A bad request gets one line naming the field, the value and the limit — never a TF internal.

The exported graphs reject bad requests with ``tf.debugging`` asserts whose raw text
(``assertion failed: [...] [Condition x >= y ...] [x (k:0) = ] [0] ... [[{{node ...}}]]``) is
rewritten by :func:`tfmmrec.errors.one_line_error` for REST bodies, gRPC details, model
status records and ``tfmmrec query``.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf

from tests.serving.conftest import MODEL, rest_predict
from tfmmrec.cli import main
from tfmmrec.errors import ServingError
from tfmmrec.export.warmup import predict_request
from tfmmrec.serving.client import ServingClient, ServingRequestError
from tfmmrec.serving.registry import ServedModel, VersionPolicy
from tfmmrec.serving.server import ModelServer, ServerOptions
from tfmmrec.serving.status import one_line_error

# The reviewer's message, verbatim, and the same form for the other limits of the export.
RAW = {
    "k_zero": (
        "assertion failed: [k must be >= 1] [Condition x >= y did not hold element-wise:] "
        "[x (k:0) = ] [0] [y (assert_greater_equal/y:0) = ] [1]\n"
        "\t [[{{node assert_greater_equal/Assert/Assert}}]]",
        "k must be >= 1 (got 0)"),
    "empty_text": (
        "assertion failed: [text: empty string in the batch]\n\t [[{{node Assert/Assert}}]]",
        "text: empty string in the batch"),
    "long_text": (
        "assertion failed: [text: a text is longer than export.limits.max_text_bytes=65536 "
        "bytes; lengths:] [102400]\n\t [[{{node Assert_1/Assert}}]]",
        "text: a text is longer than export.limits.max_text_bytes=65536 bytes; lengths: 102400"),
    "big_batch": (
        "assertion failed: [user_id: batch larger than export.limits.max_batch_size=1024:] "
        "[1025]\n\t [[{{node Assert_1/Assert}}]]",
        "user_id: batch larger than export.limits.max_batch_size=1024: 1025"),
    "many_excludes": (
        "assertion failed: [exclude_item_ids: at most 100 items per request] [Condition x <= y "
        "did not hold element-wise:] [x (strided_slice:0) = ] [101] [y (assert_less_equal/y:0)"
        " = ] [100]\n\t [[{{node assert_less_equal/Assert/Assert}}]]",
        "exclude_item_ids: at most 100 items per request (got 101)"),
    "many_session_items": (
        "assertion failed: [session_item_ids: at most 50 items per request] [Condition x <= y "
        "did not hold element-wise:] [x (strided_slice_1:0) = ] [51] "
        "[y (assert_less_equal_1/y:0) = ] [50]\n\t [[{{node assert_less_equal_1/Assert/Assert}}]]",
        "session_item_ids: at most 50 items per request (got 51)"),
    "loaded_savedmodel_framing": (
        "Graph execution error:\n\nDetected at node assert_greater_equal/Assert/Assert defined at "
        "(most recent call last):\n<stack traces unavailable>\nassertion failed: [k must be <= "
        "max_k=20] [Condition x <= y did not hold element-wise:] [x (k:0) = ] [21] "
        "[y (assert_less_equal/y:0) = ] [20]\n\t [[{{node assert_less_equal/Assert/Assert}}]] "
        "[Op:__inference_signature_wrapper_1234]",
        "k must be <= max_k=20 (got 21)"),
    "tf_serving_cpp": (
        "assertion failed: [k must be >= 1] [Condition x >= y did not hold element-wise:] "
        "[x (k:0) = ] [-3] [y (assert_greater_equal/y:0) = ] [1]\n\t [[{{function_node "
        "__inference_signature_wrapper_99}}{{node assert_greater_equal/Assert/Assert}}]]",
        "k must be >= 1 (got -3)"),
    "root_errors": (
        "2 root error(s) found.\n  (0) INVALID_ARGUMENT: assertion failed: [text: empty string "
        "in the batch]\n\t [[{{node Assert/Assert}}]]\n  (1) INVALID_ARGUMENT: assertion failed: "
        "[text: empty string in the batch]\n\t [[{{node Assert/Assert}}]]\n0 successful "
        "operations.",
        "text: empty string in the batch"),
    "boolean_condition": (  # x is a derived true/false: its 0/1 would only confuse
        "assertion failed: [exclude_item_ids needs one row per request in the batch (or none)] "
        "[Condition x == y did not hold element-wise:] [x (LogicalOr:0) = ] [0] "
        "[y (assert_equal_1/y:0) = ] [1]\n\t [[{{node assert_equal_1/Assert/AssertGuard/Assert}}]]",
        "exclude_item_ids needs one row per request in the batch (or none)"),
    "count_equality": (
        "assertion failed: [user_id needs one entry per session (or none)] [Condition x == y "
        "did not hold element-wise:] [x (strided_slice_2:0) = ] [3] [y (strided_slice:0) = ] "
        "[2]\n\t [[{{node assert_equal_2/Assert/AssertGuard/Assert}}]]",
        "user_id needs one entry per session (or none) (got 3, expected 2)"),
    "no_message": (
        "assertion failed: [Condition x <= y did not hold element-wise:] [x (x:0) = ] "
        "[0 1 2...] [y (assert_less_equal/y:0) = ] [3]\n\t [[{{node assert_less_equal/Assert/"
        "Assert}}]]",
        "condition x <= y did not hold (x = [0 1 2...], y = 3)"),
    "not_an_image": (
        "Unknown image file format. One of JPEG, PNG, GIF, BMP required.\n\t [[{{node "
        "DecodeImage}}]] [Op:__inference_signature_wrapper_7]",
        "image: Unknown image file format. One of JPEG, PNG, GIF, BMP required."),
    "not_an_assert": ("Input is empty.\n\t [[{{node DecodeWav}}]] [Op:__inference_x_7]",
                      "Input is empty."),
    "truncated_png": (
        "Invalid PNG data, size 100\n\t [[{{node DecodePng}}]] "
        "[Op:__inference_signature_wrapper_7]",
        "image: corrupt or truncated image (Invalid PNG data, size 100) - send complete JPEG, "
        "PNG, GIF, BMP or WebP bytes"),
    "truncated_wav": (
        "Data too short when trying to read string\n\t [[{{node DecodeWav}}]]",
        "audio: corrupt or truncated WAV (Data too short when trying to read string) - send "
        "complete 16-bit PCM WAV bytes"),
    # Decoder errors that named neither the input nor what to send (the reviewer's list).
    "png_decoder_init": (
        "{{function_node __wrapped__DecodeImage_device_/job:localhost/replica:0/task:0/device:"
        "CPU:0}} Invalid PNG. Failed to initialize decoder. [Op:DecodeImage]",
        "image: corrupt or truncated image (Invalid PNG. Failed to initialize decoder.) - send "
        "complete JPEG, PNG, GIF, BMP or WebP bytes"),
    "jpeg_uncompress": (
        "jpeg::Uncompress failed. Invalid JPEG data or crop window.\n\t [[{{node DecodeJpeg}}]]",
        "image: corrupt or truncated image (jpeg::Uncompress failed. Invalid JPEG data or crop "
        "window.) - send complete JPEG, PNG, GIF, BMP or WebP bytes"),
    "webp_header": (
        "Failed to decode WebP header. [Op:DecodeImage]",
        "image: corrupt or truncated image (Failed to decode WebP header.) - send complete "
        "JPEG, PNG, GIF, BMP or WebP bytes"),
    "wav_channels": (
        "Bad number of channels for WAV: Expected at least 1, but got 0 [Op:DecodeWav]",
        "audio: corrupt or truncated WAV (Bad number of channels for WAV: Expected at least 1, "
        "but got 0) - send complete 16-bit PCM WAV bytes"),
    "wav_bytes_per_sample": (
        "Bad bytes per sample in WAV header: Expected 2 but got 7\n\t [[{{node DecodeWav}}]]",
        "audio: corrupt or truncated WAV (Bad bytes per sample in WAV header: Expected 2 but "
        "got 7) - send complete 16-bit PCM WAV bytes"),
    "wav_data_chunk": (
        "WAV data chunk 'data' is too large: 4294967295 bytes, but the limit is 2147483647 "
        "[Op:DecodeWav]",
        "audio: corrupt or truncated WAV (WAV data chunk 'data' is too large: 4294967295 bytes, "
        "but the limit is 2147483647) - send complete 16-bit PCM WAV bytes"),
    "wav_format_chunk": (
        "Bad format chunk size for WAV: Expected 16 or 18, but got4294967280",
        "audio: corrupt or truncated WAV (Bad format chunk size for WAV: Expected 16 or 18, but "
        "got4294967280) - send complete 16-bit PCM WAV bytes"),
    # Well-formed WAVs in encodings DecodeWav does not read: not "corrupt or truncated".
    "wav_8_bit": (
        "Can only read 16-bit WAV files, but received 8 [Op:DecodeWav]",
        "audio: unsupported WAV encoding (Can only read 16-bit WAV files, but received 8) - send "
        "16-bit PCM WAV bytes (tfmmrec query --audio FILE converts other formats)"),
    "wav_adpcm": (
        "Bad format chunk size for WAV: Expected 16 or 18, but got50\n\t [[{{node DecodeWav}}]]",
        "audio: unsupported WAV encoding (Bad format chunk size for WAV: Expected 16 or 18, but "
        "got50) - send 16-bit PCM WAV bytes (tfmmrec query --audio FILE converts other formats)"),
    "eager_op_suffix": ("Input is empty. [Op:DecodeWav] name: decode",
                        "Input is empty."),
    # A signature calling a nested tf.function (serving_default): TF names the wrapper first.
    "function_node_empty_batch": (
        "{{function_node __inference_signature_wrapper_<lambda>_4934}} assertion failed: "
        "[user_id: empty batch - send at least one item]\n\t [[{{function_node "
        "__inference__user_query_4100}}{{node Assert/Assert}}]] "
        "[Op:__inference_signature_wrapper_<lambda>_4934]",
        "user_id: empty batch - send at least one item"),
    "function_node_big_batch": (
        "{{function_node __inference_signature_wrapper_<lambda>_4934}} assertion failed: "
        "[user_id: batch larger than export.limits.max_batch_size=1024:] [1025]\n\t "
        "[[{{function_node __inference__user_query_4100}}{{node Assert_1/Assert}}]]",
        "user_id: batch larger than export.limits.max_batch_size=1024: 1025"),
    "function_node_condition": (
        "{{function_node __inference_signature_wrapper_99}}{{node assert/Assert}} "
        "INVALID_ARGUMENT: assertion failed: [k must be >= 1] [Condition x >= y did not hold "
        "element-wise:] [x (k:0) = ] [0] [y (assert_greater_equal/y:0) = ] [1]",
        "k must be >= 1 (got 0)"),
    "node_name_prefix": (
        "node assert_less_equal/Assert/Assert: assertion failed: [k must be <= max_k=20] "
        "[Condition x <= y did not hold element-wise:] [x (k:0) = ] [21] "
        "[y (assert_less_equal/y:0) = ] [20]\n\t [[node assert_less_equal/Assert/Assert "
        "(defined at /x.py:3) ]]",
        "k must be <= max_k=20 (got 21)"),
    "function_node_not_an_assert": (
        "{{function_node __inference_signature_wrapper_7}} Unknown image file format. One of "
        "JPEG, PNG, GIF, BMP required.\n\t [[{{node DecodeImage}}]]",
        "image: Unknown image file format. One of JPEG, PNG, GIF, BMP required."),
    "eager_assert": ("k must be >= 1\nCondition x >= y did not hold.\nFirst 1 elements of x:\n"
                     "[0]\nFirst 1 elements of y:\n[1]",
                     "k must be >= 1 (got 0)"),
}


@pytest.mark.parametrize("case", sorted(RAW))
def test_raw_tf_messages_become_one_line(case):
    raw, expected = RAW[case]
    assert one_line_error(raw) == expected


@pytest.mark.parametrize("message", [
    "k must be >= 1 (got 0)",
    "warmup request for signature 'recommend' failed: assertion failed: [x]",
    "Expects arg[0] to be string but int32 is provided",
    "Servable not found for request: Specific(tfmmrec, 99)",
    'Serving signature key "nope" not found.',
    "",
])
def test_clean_messages_pass_through_unchanged(message):
    assert one_line_error(message) == message
    assert one_line_error(one_line_error(message)) == message


def _graph_error(function, *args, **kwargs) -> str:
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        function(*args, **kwargs)
    return raised.value.message


@tf.function(input_signature=[tf.TensorSpec([], tf.int32, name="k")])
def _check_k(k):
    tf.debugging.assert_greater_equal(k, 1, message="k must be >= 1")
    tf.debugging.assert_less_equal(k, 20, message="k must be <= max_k=20")
    return k


@tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
def _check_text(text):
    lengths = tf.strings.length(text)
    checks = [tf.debugging.Assert(tf.reduce_all(lengths > 0),
                                  ["text: empty string in the batch"]),
              tf.debugging.Assert(tf.reduce_all(lengths <= 8), [
                  "text: a text is longer than export.limits.max_text_bytes=8 bytes; lengths:",
                  lengths], summarize=8)]
    with tf.control_dependencies(checks):
        return tf.identity(text)


@tf.function(input_signature=[tf.TensorSpec([None, None], tf.string)])
def _check_excludes(ids):
    tf.debugging.assert_less_equal(tf.shape(ids)[1], 3,
                                   message="exclude_item_ids: at most 3 items per request")
    return ids


def test_real_graph_asserts_become_one_line():
    """The messages TensorFlow really produces (with the in-process stack-trace framing)."""
    k_zero = _graph_error(_check_k, tf.constant(0))
    assert "Condition x >= y" in k_zero and "{{node" in k_zero  # the raw form, as reviewed
    assert one_line_error(k_zero) == "k must be >= 1 (got 0)"
    assert one_line_error(_graph_error(_check_k, tf.constant(21))) == \
        "k must be <= max_k=20 (got 21)"
    assert one_line_error(_graph_error(_check_text, tf.constant(["ok", ""]))) == \
        "text: empty string in the batch"
    assert one_line_error(_graph_error(_check_text, tf.constant(["a" * 12, "ok"]))) == \
        "text: a text is longer than export.limits.max_text_bytes=8 bytes; lengths: [12 2]"
    assert one_line_error(_graph_error(_check_excludes, tf.constant([["a"] * 5]))) == \
        "exclude_item_ids: at most 3 items per request (got 5)"


def test_asserts_in_a_nested_function_of_a_reloaded_savedmodel_become_one_line(tmp_path):
    """A signature that calls another tf.function (as serving_default calls the towers) gets
    "{{function_node …}}" before "assertion failed:" — the reviewer's raw REST body."""
    module = tf.Module()
    module.check_k = _check_k
    wrapper = tf.function(lambda k: {"k": module.check_k(k)},
                          input_signature=[tf.TensorSpec([], tf.int32, name="k")])
    tf.saved_model.save(module, str(tmp_path / "m"), signatures={"serving_default": wrapper})
    loaded = tf.saved_model.load(str(tmp_path / "m"))
    raw = _graph_error(loaded.signatures["serving_default"], k=tf.constant(0))
    assert raw.startswith("{{function_node")
    assert one_line_error(raw) == "k must be >= 1 (got 0)"


def test_graph_asserts_of_a_reloaded_savedmodel_become_one_line(tmp_path):
    """A loaded SavedModel's errors carry "<stack traces unavailable>" framing instead."""
    module = tf.Module()
    module.check_k = _check_k
    tf.saved_model.save(module, str(tmp_path / "m"), signatures={"check_k": _check_k})
    loaded = tf.saved_model.load(str(tmp_path / "m"))
    raw = _graph_error(loaded.signatures["check_k"], k=tf.constant(0))
    assert "{{node" in raw
    assert one_line_error(raw) == "k must be >= 1 (got 0)"


# -- end to end: the served tiny export ------------------------------------------------------
EMPTY_BATCH = "user_id: empty batch - send at least one item"
BIG_BATCH = "user_id: batch larger than export.limits.max_batch_size=1024: 1025"
BAD = {  # signature, inputs, the one line every front end must answer with
    "k_zero": ("recommend", {"user_id": ["u0000"], "k": 0}, "k must be >= 1 (got 0)"),
    "empty_text": ("query_text", {"text": [""], "k": 3}, "text: empty string in the batch"),
    "blank_text": ("query_text", {"text": ["ok", " \t "], "k": 3},
                   "text: a string in the batch is only whitespace"),
    "unicode_blank_text": ("query_text", {"text": ["\u00a0\u3000"], "k": 3},
                           "text: a string in the batch is only whitespace"),
    # the check named the user_id a session request without one is given ("" per row)
    "session_big_batch": ("recommend_session", {"session_item_ids": [["i0"]] * 1025, "k": 3},
                          BIG_BATCH.replace("user_id", "session_item_ids")),
    # serving_default wraps the towers' tf.function: "{{function_node …}}" framing
    "default_empty_batch": ("serving_default", {"user_id": []}, EMPTY_BATCH),
    "default_big_batch": ("serving_default", {"user_id": ["u0000"] * 1025}, BIG_BATCH),
}


def _numpy_inputs(inputs: dict) -> dict:
    encode = np.vectorize(str.encode, otypes=[object])
    return {alias: np.int32(value) if alias == "k" else encode(np.array(value, dtype=object))
            for alias, value in inputs.items()}


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize("case", sorted(BAD))
def test_served_graph_assert_is_one_line_over_rest_and_grpc(server, case):
    signature, inputs, expected = BAD[case]
    status, payload = rest_predict(server, {"signature_name": signature, "inputs": inputs})
    assert (status, payload) == (400, {"error": expected})
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(predict_request(MODEL, signature, _numpy_inputs(inputs)), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == expected


@pytest.mark.parametrize("rest", [False, True], ids=["grpc", "rest"])
def test_client_error_is_one_line(server, rest):
    port = server.rest_port if rest else server.port
    with ServingClient(f"127.0.0.1:{port}", MODEL, rest=rest, timeout=30) as client, \
            pytest.raises(ServingRequestError) as raised:
        client.query_text([""], k=3)  # k=0 is refused before sending (test_client_checks)
    assert raised.value.details == "text: empty string in the batch"
    assert "\n" not in str(raised.value) and "{{node" not in str(raised.value)


@pytest.mark.parametrize("rest", [False, True], ids=["grpc", "rest"])
def test_query_command_prints_one_line(server, rest, capsys):
    port = server.rest_port if rest else server.port
    args = ["query", "--target", f"127.0.0.1:{port}", "--model", MODEL, "--text", "",
            "--k", "3", *(["--rest"] if rest else [])]
    assert main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1, error
    assert "INVALID_ARGUMENT: text: empty string in the batch — fix the request" in error[0]


def test_exported_model_empty_batch_is_one_line(in_process):
    with pytest.raises(ServingError) as raised:
        in_process[MODEL].recommend([])
    message = str(raised.value)
    assert "{{" not in message and "assertion failed" not in message and "\n" not in message
    assert "user_id" in message and "empty" in message


@pytest.mark.parametrize("rest", [False, True], ids=["grpc", "rest"])
def test_query_command_prints_the_batch_limit_as_one_line(server, rest, capsys):
    port = server.rest_port if rest else server.port
    users = [arg for _ in range(1025) for arg in ("--user", "u0000")]
    args = ["query", "--target", f"127.0.0.1:{port}", "--model", MODEL, *users,
            *(["--rest"] if rest else [])]
    assert main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1, error
    assert f"INVALID_ARGUMENT: {BIG_BATCH} — fix the request" in error[0]


# -- start-up: a version policy naming versions that are not there ---------------------------
def test_specific_policy_naming_a_missing_version_is_a_one_line_error(tmp_path):
    base = tmp_path / MODEL
    for version in (1, 3):
        (base / str(version)).mkdir(parents=True)
    model = ServedModel(MODEL, base, VersionPolicy.parse("specific:99,7"))
    options = ServerOptions(port=0, rest_port=None, poll_seconds=0, warmup=False)
    with pytest.raises(ServingError) as raised:
        ModelServer([model], options).start()
    message = str(raised.value)
    assert "asks for versions 7, 99" in message
    assert "versions present: 1, 3" in message
    assert "\n" not in message


def test_serve_command_reports_a_missing_version_without_traceback(tmp_path, capsys):
    base = tmp_path / MODEL
    (base / "1").mkdir(parents=True)
    code = main(["serve", "--model-base-path", str(base), "--version-policy", "specific:99",
                 "--port", "0", "--rest-api-port", "0", "--poll-seconds", "0"])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1, error
    assert "asks for version 99" in error[0] and "versions present: 1" in error[0]
    assert "Traceback" not in error[0] and "RequestStatus" not in error[0]
