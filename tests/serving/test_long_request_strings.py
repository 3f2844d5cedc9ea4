"""Errors echo at most a short excerpt of any request string (issue: a 100 KB model, signature,
label, input or output name came back in full — over gRPC past its metadata limit, so the
client saw RESOURCE_EXHAUSTED instead of the real status), and a URL version of thousands of
digits is the same 400 as one of twenty."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from tests.serving.conftest import MODEL, rest_predict
from tests.serving.test_bad_requests import grpc_predict
from tests.serving.test_hostile import rest_raw
from tfmmrec.export.warmup import predict_request
from tfmmrec.serving.client import ServingClient, ServingRequestError

LONG = "x" * 100_000
ECHO = "x" * 150  # what every message shows of LONG (short() keeps 200 characters)
MAX_MESSAGE = 1_000
USER = np.array([b"u0000"], dtype=object)


def with_long(field: str, signature: str = "serving_default"):
    inputs = {"user_id": USER}
    request = predict_request(MODEL, signature, inputs)
    if field == "model":
        request.model_spec.name = LONG
    elif field == "signature":
        request.model_spec.signature_name = LONG
    elif field == "label":
        request.model_spec.version_label = LONG
    elif field == "input":
        request.inputs[LONG].CopyFrom(request.inputs["user_id"])
    elif field == "output":
        request.output_filter.append(LONG)
    return request


GRPC_CASES = {  # request, status, start of the message
    "model": (with_long("model"), grpc.StatusCode.NOT_FOUND,
              "Servable not found for request: Latest(" + ECHO),
    "signature": (with_long("signature"), grpc.StatusCode.FAILED_PRECONDITION,
                  f'Serving signature key "{ECHO}'),
    "label": (with_long("label"), grpc.StatusCode.INVALID_ARGUMENT,
              f"Unrecognized servable version label: {ECHO}"),
    "extra_input": (with_long("input"), grpc.StatusCode.INVALID_ARGUMENT,
                    "input size does not match signature: 2!=1 len({user_id,xxx"),
    "unknown_input": (with_long("input", "recommend"), grpc.StatusCode.INVALID_ARGUMENT,
                      "Inputs contains invalid name. Used request inputs: user_id, request "
                      "input: user_id,xxx"),
    "output_filter": (with_long("output"), grpc.StatusCode.INVALID_ARGUMENT,
                      f"output tensor alias not found in signature: {ECHO}"),
}


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize("case", sorted(GRPC_CASES))
def test_grpc_errors_echo_a_long_request_string_shortened(server, case):
    request, code, start = GRPC_CASES[case]
    with pytest.raises(grpc.RpcError) as raised:
        grpc_predict(server, request)
    details = raised.value.details()
    assert raised.value.code() == code, details[:300]
    assert details.startswith(start), details[:300]
    assert len(details) < MAX_MESSAGE


def test_grpc_metadata_and_status_echo_a_long_model_name_shortened(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        calls = [
            (prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata,
             get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])),
            (model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus,
             get_model_status_pb2.GetModelStatusRequest())]
        for call, request in calls:
            request.model_spec.name = LONG
            with pytest.raises(grpc.RpcError) as raised:
                call(request, timeout=30)
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND
            assert len(raised.value.details()) < MAX_MESSAGE
        field = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=[LONG])
        field.model_spec.name = MODEL
        with pytest.raises(grpc.RpcError) as raised:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(
                field, timeout=30)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.details().startswith(f"Metadata field {ECHO}")
        assert len(raised.value.details()) < MAX_MESSAGE


def test_the_client_gets_the_real_status_not_resource_exhausted(server, tiny_exports):
    with ServingClient(f"127.0.0.1:{server.port}", MODEL, timeout=30) as client, \
            pytest.raises(ServingRequestError) as raised:
        client.predict(LONG, {"user_id": tiny_exports.user_ids[:1]})
    assert raised.value.code == "FAILED_PRECONDITION"
    assert "send fewer or smaller items" not in str(raised.value)


NAME = "y" * 500_000  # within the test server's 1 MiB body limit
REST_CASES = {
    "columnar_input": {"inputs": {"user_id": ["u1"], NAME: [1]}},
    "row_input": {"instances": [{"user_id": "u1", NAME: 1}]},
    "signature": {"signature_name": NAME, "inputs": {"user_id": ["u1"]}},
}


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize("case", sorted(REST_CASES))
def test_rest_errors_echo_a_long_name_shortened(server, case):
    status, payload = rest_predict(server, REST_CASES[case])
    assert status == 400, str(payload)[:300]
    assert "y" * 150 in payload["error"] and len(payload["error"]) < MAX_MESSAGE


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", f"/v1/models/{'m' * 50_000}:predict", 404),
    ("GET", f"/v1/models/{'m' * 50_000}", 404),
    ("GET", f"/v1/models/{MODEL}/{'p' * 50_000}", 400),
    ("GET", f"/{'p' * 50_000}", 404),
], ids=["predict_model", "status_model", "malformed", "not_v1"])
def test_rest_errors_echo_a_long_url_shortened(server, method, path, status):
    got, payload = rest_raw(server, b'{"inputs": {"user_id": ["u1"]}}', path, method)
    assert got == status, str(payload)[:300]
    assert len(payload["error"]) < MAX_MESSAGE


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize(("method", "suffix"), [("POST", ":predict"), ("GET", ""),
                                                ("GET", "/metadata")])
@pytest.mark.parametrize("digits", [20, 5000])
def test_a_version_of_thousands_of_digits_is_a_400(server, method, suffix, digits):
    """int() refuses strings of 4300+ digits: the server answered 500."""
    path = f"/v1/models/{MODEL}/versions/{'9' * digits}{suffix}"
    status, payload = rest_raw(server, b'{"inputs": {"user_id": ["u1"]}}', path, method)
    assert status == 400, payload
    assert payload["error"].startswith('Failed to convert version: "99999')
    assert payload["error"].endswith(f"a version is an int64 (at most {2**63 - 1})")
    assert len(payload["error"]) < MAX_MESSAGE


@pytest.mark.usefixtures("still_serving")
def test_a_version_with_leading_zeros_is_its_number(server, tiny_exports):
    path = f"/v1/models/{MODEL}/versions/{'0' * 5000}1:predict"
    status, payload = rest_predict(server, {"inputs": {"user_id": tiny_exports.user_ids[:1]}},
                                   path)
    assert status == 200, payload
