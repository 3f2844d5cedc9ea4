"""Bad requests get TF Serving's status (gRPC code, HTTP code, message); the server stays up."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tests.serving.conftest import MAX_REQUEST_BYTES, MODEL, rest_predict
from tfmmrec.export.warmup import predict_request
from tfmmrec.serving.client import ServingClient, ServingRequestError

USER = np.array([b"u0000"], dtype=object)


def grpc_predict(server, request):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request,
                                                                                  timeout=30)


def b64(data: bytes) -> dict:
    import base64

    return {"b64": base64.b64encode(data).decode()}


# (signature, gRPC inputs, expected code, message fragment)
GRPC_CASES = {
    "missing_input": ("query_text", {"k": np.int32(3)},
                      grpc.StatusCode.INVALID_ARGUMENT,
                      "not found in request and no default value provided. Inputs expected to "
                      "be in the request {k}, or default input alias set: exclude_item_ids,k"),
    "extra_input": ("serving_default", {"user_id": USER, "k": np.int32(3)},
                    grpc.StatusCode.INVALID_ARGUMENT, "Sent extra: {k}"),
    "wrong_dtype": ("serving_default", {"user_id": np.array([7], np.int32)},
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "Expects arg[0] to be string but int32 is provided"),
    "wrong_shape": ("serving_default", {"user_id": np.array([[b"u1"]], dtype=object)},
                    grpc.StatusCode.INVALID_ARGUMENT, "has shape [1, 1] but the signature "
                    "expects [-1]"),
    "k_not_scalar": ("recommend", {"user_id": USER, "k": np.array([3], np.int32)},
                     grpc.StatusCode.INVALID_ARGUMENT, "expects []"),
    "k_zero": ("recommend", {"user_id": USER, "k": np.int32(0)},
               grpc.StatusCode.INVALID_ARGUMENT, "k must be >= 1"),
    "k_above_max": ("query_text", {"text": np.array([b"jazz"], dtype=object),
                                   "k": np.int32(21)},
                    grpc.StatusCode.INVALID_ARGUMENT, "k must be <= max_k=20"),
    "corrupt_image": ("query_image", {"image": np.array([b"\x89PNG not really"], dtype=object),
                                      "k": np.int32(3)},
                      grpc.StatusCode.INVALID_ARGUMENT, "Unknown image file format"),
    "corrupt_audio": ("query_audio", {"audio": np.array([b"RIFF....WAVEjunk"], dtype=object),
                                      "k": np.int32(3)},
                      grpc.StatusCode.INVALID_ARGUMENT, ""),
    "empty_string": ("query_text", {"text": np.array([b"ok", b""], dtype=object),
                                    "k": np.int32(3)},
                     grpc.StatusCode.INVALID_ARGUMENT, "text: empty string in the batch"),
    "empty_batch": ("query_text", {"text": np.array([], dtype=object).astype(bytes),
                                   "k": np.int32(3)},
                    grpc.StatusCode.INVALID_ARGUMENT, "text: empty batch"),
    "unknown_signature": ("no_such_signature", {"user_id": USER},
                          grpc.StatusCode.FAILED_PRECONDITION,
                          'Serving signature key "no_such_signature" not found.'),
}


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize("case", sorted(GRPC_CASES))
def test_grpc_bad_request_gets_tf_serving_status(server, case):
    signature, inputs, code, fragment = GRPC_CASES[case]
    with pytest.raises(grpc.RpcError) as raised:
        grpc_predict(server, predict_request(MODEL, signature, inputs))
    assert raised.value.code() == code, raised.value.details()
    assert fragment in raised.value.details()


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize(("model", "version", "message"), [
    ("no_such_model", None, "Servable not found for request: Latest(no_such_model)"),
    (MODEL, 99, f"Servable not found for request: Specific({MODEL}, 99)"),
], ids=["unknown_model", "unknown_version"])
def test_unknown_model_or_version_is_not_found(server, model, version, message):
    with pytest.raises(grpc.RpcError) as raised:
        grpc_predict(server, predict_request(model, "serving_default", {"user_id": USER},
                                             version))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == message
    path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "") + ":predict"
    status, payload = rest_predict(server, {"inputs": {"user_id": ["u1"]}}, path)
    assert (status, payload) == (404, {"error": message})


def test_unknown_user_gets_the_cold_start_answer_not_an_error(server, in_process):
    """The export's documented policy: unknown ids fall back to the cold-start query."""
    users = np.array([b"never-seen-user"], dtype=object)
    served = tf.make_ndarray(grpc_predict(server, predict_request(
        MODEL, "serving_default", {"user_id": users})).outputs["item_ids"])
    np.testing.assert_array_equal(served, in_process[MODEL].recommend(["never-seen-user"])[
        "item_ids"])


@pytest.mark.usefixtures("still_serving")
def test_oversized_grpc_message_is_resource_exhausted(server):
    big = np.array([b"\x89PNG" + b"\0" * (MAX_REQUEST_BYTES + 10)], dtype=object)
    with pytest.raises(grpc.RpcError) as raised:
        grpc_predict(server, predict_request(MODEL, "query_image", {"image": big,
                                                                    "k": np.int32(3)}))
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# (body, expected HTTP status, message fragment)
REST_CASES = {
    "not_json": (b"{not json", 400, "JSON Parse error"),
    "empty_body": (b"", 400, "JSON Parse error: The document is empty"),
    "not_an_object": ([1, 2], 400, "Is not object"),
    "no_inputs_key": ({"signature_name": "serving_default"}, 400,
                      "Missing 'inputs' or 'instances' key"),
    "both_keys": ({"inputs": ["u1"], "instances": ["u1"]}, 400,
                  "expecting only one of 'inputs' or 'instances' keys"),
    "missing_input": ({"signature_name": "query_text", "inputs": {"k": 3}}, 400,
                      "not found in request and no default value provided"),
    "wrong_json_type": ({"inputs": {"user_id": [1]}}, 400,
                        "JSON Value: 1 Type: Number is not of expected type: string"),
    "k_per_instance": ({"signature_name": "recommend",
                        "instances": [{"user_id": "u1", "k": 3}]}, 400,
                       # row format: every instance must carry every input (as TF Serving)
                       "keys must be equal to: exclude_item_ids,k,user_id"),
    "row_format_of_a_scalar_input": (
        {"signature_name": "recommend", "instances": [{"user_id": "u1"}]}, 400,
        # what to send instead (adding k to the row, as the first part suggests, cannot work)
        "exclude_item_ids,k,user_id (this signature's scalar input k cannot be given per row: "
        "send the columnar form {\"inputs\": {...}}, where inputs left out take their "
        "defaults)"),
    "k_out_of_range": ({"signature_name": "recommend",
                        "inputs": {"user_id": ["u1"], "k": 0}}, 400, "k must be >= 1"),
    "corrupt_image_b64": ({"signature_name": "query_image",
                           "inputs": {"image": [b64(b"junk")], "k": 3}}, 400,
                          "Unknown image file format"),
    "bad_b64": ({"signature_name": "query_image", "inputs": {"image": [{"b64": "@@@"}], "k": 3}},
                400, "Unable to base64 decode"),
    "empty_string": ({"signature_name": "query_text", "inputs": {"text": [""], "k": 3}}, 400,
                     "empty string"),
    "unknown_signature": ({"signature_name": "nope", "inputs": {"x": [1]}}, 400,
                          'Serving signature name: "nope" not found in signature def'),
    "ragged_list": ({"inputs": {"user_id": [["a", "b"], ["c"]]}}, 400,
                    "Encountered list at unexpected size"),
}


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize("case", sorted(REST_CASES))
def test_rest_bad_request_gets_tf_serving_status(server, case):
    body, expected, fragment = REST_CASES[case]
    status, payload = rest_predict(server, body)
    assert status == expected, payload
    assert fragment in payload["error"]


@pytest.mark.usefixtures("still_serving")
def test_oversized_rest_body_is_413(server):
    body = {"signature_name": "query_image",
            "inputs": {"image": [b64(b"\0" * MAX_REQUEST_BYTES)], "k": 3}}
    status, payload = rest_predict(server, body)
    assert status == 413
    assert "--max-request-bytes" in payload["error"]


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize(("path", "expected", "fragment"), [
    (f"/v1/models/{MODEL}/versions/7", 404, f"Could not find version 7 of model {MODEL}"),
    ("/v1/models/nope", 404, "Could not find any versions of model nope"),
    ("/v1/models", 400, "Missing model name in request."),
    ("/v2/anything", 404, "Not found"),
])
def test_rest_status_errors(server, path, expected, fragment):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.rest_port}{path}", timeout=30):
            pytest.fail(f"GET {path} succeeded")
    except urllib.error.HTTPError as error:
        assert error.code == expected
        assert fragment in json.loads(error.read())["error"]


def test_client_turns_statuses_into_actionable_errors(server, tiny_exports):
    with ServingClient(f"127.0.0.1:{server.port}", MODEL, version=42, timeout=30) as client, \
            pytest.raises(ServingRequestError, match="check --model and --version") as raised:
        client.recommend(tiny_exports.user_ids[:1])
    assert raised.value.code == "NOT_FOUND"
    with ServingClient(f"127.0.0.1:{server.rest_port}", MODEL, rest=True,
                       timeout=30) as client, pytest.raises(ServingRequestError) as raised:
        client.query_text(["fine", ""], k=3)
    assert raised.value.code == "INVALID_ARGUMENT"
    assert "empty string" in str(raised.value)
