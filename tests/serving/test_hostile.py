"""Hostile requests (issue 12): every case answers INVALID_ARGUMENT with a message naming the
problem, the server's RSS grows by less than 100 MiB, and the next valid request succeeds.

The media/text/batch limits live in the exported graph (so stock TF Serving enforces them too);
the TensorProto expansion check and the JSON/URL checks live in ``tfmmrec serve``. RSS is read
from /proc/self/status: the server runs in this process.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from PIL import Image
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from tests.serving.conftest import MODEL, SCANN_MODEL, sample_wav
from tests.serving.test_bad_requests import grpc_predict
from tfmmrec.config import ServingLimitsConfig
from tfmmrec.errors import ServingError
from tfmmrec.export.warmup import predict_request

LIMITS = ServingLimitsConfig()
RSS_BOUND_MIB = 100


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def wav_declaring(rate: int, samples: int = 20, byte_rate: int | None = None) -> bytes:
    """A tiny 16-bit mono WAV whose header claims ``rate`` Hz (the 105-byte attack file)."""
    wav = bytearray(sample_wav(samples / 16000))
    wav[24:28] = struct.pack("<I", rate)
    wav[28:32] = struct.pack("<I", 2 * rate if byte_rate is None else byte_rate)
    return bytes(wav)


def png_of(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    """A valid small PNG whose IHDR is rewritten to claim ``width`` x ``height``."""
    data = bytearray(png_of(4, 4))
    data[16:24] = struct.pack(">II", width, height)
    return bytes(data)


def strings(*values: bytes) -> np.ndarray:
    return np.array(list(values), dtype=object)


K = np.int32(3)

# case: (signature, inputs, fragment of the INVALID_ARGUMENT message)
GRPC_CASES = {
    "wav_4mhz": ("query_audio", {"audio": strings(wav_declaring(4_000_000)), "k": K},
                 f"max_sample_rate={LIMITS.max_sample_rate}"),
    "wav_8mhz": ("query_audio", {"audio": strings(wav_declaring(8_000_000)), "k": K},
                 f"max_sample_rate={LIMITS.max_sample_rate}"),
    "wav_rate_zero": ("query_audio", {"audio": strings(wav_declaring(0)), "k": K},
                      "sample rate outside export.limits"),
    "wav_undecodable": ("query_audio", {"audio": strings(b"\xff\xfe\x80 not a wav" * 8),
                                        "k": K}, "not a WAV file"),
    "wav_corrupt_body": ("query_audio", {"audio": strings(b"RIFF\x10\x00\x00\x00WAVE\xff\x80"
                                                          b"\xfe\x81" * 4), "k": K},
                         "WAV"),
    "text_over_byte_cap": ("query_text", {"text": strings(b"a" * (LIMITS.max_text_bytes + 1)),
                                          "k": K},
                           f"max_text_bytes={LIMITS.max_text_bytes}"),
    "png_truncated": ("query_image", {"image": strings(png_of(64, 64)[:-20]), "k": K},
                      "image: corrupt or truncated image ("),
    "wav_truncated": ("query_audio", {"audio": strings(sample_wav()[:300]), "k": K},
                      "audio: corrupt or truncated WAV ("),
    "png_8000x8000": ("query_image", {"image": strings(png_of(8000, 8000)), "k": K},
                      f"max_image_pixels={LIMITS.max_image_pixels}"),
    "png_header_2g_pixels": ("query_image", {"image": strings(png_header_claiming(
        50_000, 50_000)), "k": K}, "max_image_pixels"),
    "png_zero_width": ("query_image", {"image": strings(png_header_claiming(0, 5)), "k": K},
                       "declares no pixels"),
    "image_not_an_image": ("query_image", {"image": strings(b"GIF9 nope"), "k": K},
                           "Unknown image file format"),
    "empty_image_batch": ("query_image", {"image": np.array([], dtype=object).astype(bytes),
                                          "k": K}, "image: empty batch"),
    "empty_audio_batch": ("query_audio", {"audio": np.array([], dtype=object).astype(bytes),
                                          "k": K}, "audio: empty batch"),
    "empty_user_batch": ("recommend", {"user_id": np.array([], dtype=object).astype(bytes),
                                       "k": K}, "user_id: empty batch"),
    "empty_user_batch_default": ("serving_default", {"user_id": np.array(
        [], dtype=object).astype(bytes)}, "user_id: empty batch"),
    "user_batch_over_cap": ("embed_query", {"user_id": strings(
        *[b"u%d" % i for i in range(LIMITS.max_batch_size + 1)])},
        f"max_batch_size={LIMITS.max_batch_size}"),
    "user_id_over_id_limit": ("embed_query", {"user_id": strings(
        b"u" * (LIMITS.max_id_bytes + 1))}, f"max_id_bytes={LIMITS.max_id_bytes}"),
}


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize("case", sorted(GRPC_CASES))
def test_hostile_grpc_request_is_invalid_argument_with_bounded_memory(server, case):
    signature, inputs, fragment = GRPC_CASES[case]
    details = assert_refused_in_bounded_memory(server, predict_request(MODEL, signature, inputs),
                                               fragment)
    assert "codec can't decode" not in details


def assert_refused_in_bounded_memory(server, request, fragment: str) -> str:
    """The request is INVALID_ARGUMENT naming ``fragment``, and the server's RSS grew less than
    ``RSS_BOUND_MIB`` answering it. Returns the error details."""
    before = rss_mib()
    with pytest.raises(grpc.RpcError) as raised:
        grpc_predict(server, request)
    growth = rss_mib() - before
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert fragment in raised.value.details()
    assert growth < RSS_BOUND_MIB, f"RSS grew {growth:.0f} MiB"
    return raised.value.details()


def raw_proto(dtype: int, dims: list[int], **values) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]), **values)


PROTO_CASES = {
    # 57 bytes on the wire that make_ndarray would expand to 300,000 rows.
    "shape_300k_one_string": ("serving_default", {"user_id": raw_proto(
        types_pb2.DT_STRING, [300_000], string_val=[b"u1"])}, "carries 1 string values"),
    "negative_dimension": ("serving_default", {"user_id": raw_proto(
        types_pb2.DT_STRING, [-1], string_val=[b"u1"])}, "negative dimension"),
    "dtype_invalid": ("serving_default", {"user_id": raw_proto(0, [1])},
                      "Expects arg[0] to be string but invalid is provided"),
    "int_expansion": ("recommend", {"user_id": raw_proto(types_pb2.DT_STRING, [1],
                                                         string_val=[b"u1"]),
                                    "k": raw_proto(types_pb2.DT_INT32, [2**40], int_val=[3])},
                      "over the limit"),
    "tensor_content_mismatch": ("recommend", {
        "user_id": raw_proto(types_pb2.DT_STRING, [1], string_val=[b"u1"]),
        "k": raw_proto(types_pb2.DT_INT32, [], tensor_content=b"\x01\x02")},
        "tensor_content has 2 bytes"),
}


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize("case", sorted(PROTO_CASES))
def test_hostile_tensor_proto_is_refused_before_it_is_materialised(server, case):
    signature, protos, fragment = PROTO_CASES[case]
    request = predict_request(MODEL, signature, {})
    for alias, proto in protos.items():
        request.inputs[alias].CopyFrom(proto)
    before = rss_mib()
    with pytest.raises(grpc.RpcError) as raised:
        grpc_predict(server, request)
    assert rss_mib() - before < RSS_BOUND_MIB
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert fragment in raised.value.details()


def rest_raw(server, body: bytes, path: str = f"/v1/models/{MODEL}:predict",
             method: str = "POST"):
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}{path}",
                                     data=body if method == "POST" else None, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


REST_CASES = {
    "huge_version": (b'{"inputs": {"user_id": ["u1"]}}',
                     f"/v1/models/{MODEL}/versions/99999999999999999999999:predict",
                     "Failed to convert version"),
    "k_2_pow_31": (json.dumps({"signature_name": "recommend",
                               "inputs": {"user_id": ["u1"], "k": 2**31}}).encode(), None,
                   "out of range for int32"),
    "lone_surrogate": (b'{"inputs": {"user_id": ["\\ud800"]}}', None, "lone surrogate"),
    "init_op_signature": (json.dumps({"signature_name": "__saved_model_init_op",
                                      "inputs": {"x": [1]}}).encode(), None,
                          "not found in signature def"),
    "deep_json": (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None,
                  "nesting depth"),
    "wav_4mhz_b64": (json.dumps({"signature_name": "query_audio", "inputs": {
        "audio": [b64(wav_declaring(4_000_000))], "k": 3}}).encode(), None,
        "max_sample_rate"),
    "empty_user_batch": (json.dumps({"inputs": {"user_id": []}}).encode(), None,
                         "user_id: empty batch"),
}


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize("case", sorted(REST_CASES))
def test_hostile_rest_request_is_a_4xx(server, case):
    body, path, fragment = REST_CASES[case]
    before = rss_mib()
    status, payload = rest_raw(server, body, path or f"/v1/models/{MODEL}:predict")
    assert rss_mib() - before < RSS_BOUND_MIB
    assert status == 400, payload
    assert fragment in payload["error"]


@pytest.mark.usefixtures("still_serving")
def test_huge_version_in_a_status_url_is_a_4xx(server):
    status, payload = rest_raw(server, b"", f"/v1/models/{MODEL}/versions/{10**30}",
                               method="GET")
    assert status == 400 and "Failed to convert version" in payload["error"]


def test_fifty_megabyte_text_is_refused_before_tokenising(in_process):
    """The issue's 50 MB text (+4.2 GiB before): the byte cap runs before the tokenizer, in
    the graph, so the export refuses it wherever it is served."""

    model = in_process[MODEL]
    text = np.array([b"word " * 10_000_000], dtype=object)
    before = rss_mib()
    with pytest.raises(ServingError, match="max_text_bytes=65536"):
        model.call("query_text", text=text, k=np.int32(3))
    assert rss_mib() - before < RSS_BOUND_MIB + 50  # the 50 MB request itself is held once


def peak_rss_mib_of(call) -> float:
    """Peak resident memory during ``call()`` above the resident memory before it (Linux:
    ``clear_refs`` resets the peak); skips where the peak cannot be reset."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pytest.skip("cannot reset the peak RSS here")
    before = rss_mib()
    call()
    with open("/proc/self/status") as status:
        peak = next(float(line.split()[1]) / 1024 for line in status
                    if line.startswith("VmHWM:"))
    return peak - before


def test_many_texts_under_the_per_text_cap_are_refused_by_the_request_total(in_process):
    """1,024 texts of 60 KB each passed the per-text cap and took 5.4 GiB to tokenise; the
    request's total (``max_text_request_bytes``) is checked before the tokenizer too."""
    model = in_process[MODEL]
    per_text = LIMITS.max_text_bytes
    over = np.array([b"word " * (per_text // 5)] * (LIMITS.max_text_request_bytes // per_text
                                                     + 1), dtype=object)

    def refused():
        with pytest.raises(ServingError, match=(
                f"export.limits.max_text_request_bytes={LIMITS.max_text_request_bytes} bytes "
                rf"in all \(send fewer or shorter texts per request\); total: "
                rf"{sum(map(len, over))}$")):
            model.call("query_text", text=over, k=K)

    assert peak_rss_mib_of(refused) < RSS_BOUND_MIB
    at_limit = np.array([b"a" * per_text] * (LIMITS.max_text_request_bytes // per_text),
                        dtype=object)
    assert model.call("query_text", text=at_limit, k=K)["item_ids"].shape == (len(at_limit), 3)


def test_many_images_under_the_per_image_cap_are_refused_by_the_request_total(in_process):
    """100 blank 16-MP PNGs took 38 s of CPU to decode, each within max_image_pixels; the
    pixels the headers declare are summed before any image is decoded."""
    side = int(LIMITS.max_image_pixels ** 0.5)
    count = LIMITS.max_image_request_pixels // (side * side) + 1
    images = strings(*[png_header_claiming(side, side)] * count)
    with pytest.raises(ServingError, match=(
            f"export.limits.max_image_request_pixels={LIMITS.max_image_request_pixels} pixels "
            rf"in all \(send fewer or smaller images per request\); total: "
            rf"{count * side * side}$")):
        in_process[MODEL].call("query_image", image=images, k=K)
    answered = in_process[MODEL].call("query_image", image=strings(png_of(8, 8)), k=K)
    assert answered["item_ids"].shape == (1, 3)


def test_audio_longer_than_the_cap_is_refused_before_resampling(in_process):
    """10 minutes at 8 kHz plus one second (9.6 MB: over the test server's request cap, so
    called in-process; the check is in the graph)."""

    clip = wav_declaring(8000, samples=int(8000 * LIMITS.max_audio_seconds) + 8000)
    before = rss_mib()
    with pytest.raises(ServingError,
                       match=f"max_audio_seconds={LIMITS.max_audio_seconds:g}"):
        in_process[MODEL].call("query_audio", audio=strings(clip), k=np.int32(3))
    assert rss_mib() - before < RSS_BOUND_MIB


@pytest.mark.parametrize("model", [MODEL, SCANN_MODEL])
@pytest.mark.parametrize(("signature", "inputs", "message"), [
    ("recommend", {"user_id": ["u001"], "exclude_item_ids": [["a"], ["b"]]},
     "exclude_item_ids needs one row per request in the batch (or none)"),
    ("recommend_session", {"session_item_ids": [["i0001"], ["i0002"]], "user_id": ["u001"] * 3},
     "user_id needs one entry per session (or none) (got 3, expected 2)"),
], ids=["exclusions", "session users"])
def test_a_batch_mismatch_is_named_before_any_search(in_process, model, signature, inputs,
                                                     message):
    """The ScaNN export answered a mismatched exclusion batch with TF's own gather message
    (the search ran before the check); every index kind must name the input."""
    arrays = {name: np.array(value, dtype=object) for name, value in inputs.items()}
    for _ in range(3):  # the order of unordered ops varied from call to call
        with pytest.raises(ServingError) as raised:
            in_process[model].call(signature, k=K, **arrays)
        assert str(raised.value).endswith(message), str(raised.value)


def test_limits_are_written_into_the_export_metadata(in_process):
    assert in_process[MODEL].metadata["limits"] == {
        "max_batch_size": LIMITS.max_batch_size, "max_id_bytes": LIMITS.max_id_bytes,
        "max_text_bytes": LIMITS.max_text_bytes,
        "max_text_request_bytes": LIMITS.max_text_request_bytes,
        "max_image_pixels": LIMITS.max_image_pixels,
        "max_image_request_pixels": LIMITS.max_image_request_pixels,
        "min_sample_rate": LIMITS.min_sample_rate, "max_sample_rate": LIMITS.max_sample_rate,
        "max_audio_seconds": LIMITS.max_audio_seconds}
