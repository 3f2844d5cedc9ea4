"""End to end over loopback: export → server → gRPC/REST answers equal the in-process model."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

from tests.serving.conftest import MODEL, SCANN_MODEL
from tfmmrec.serving.client import ServingClient

SIGNATURES = ["serving_default", "recommend", "embed_query", "query_text", "query_image",
              "query_audio"]


def signature_inputs(exports, signature: str) -> dict:
    users = np.array([u.encode() for u in exports.user_ids[:3]], dtype=object)
    k = np.int32(7)
    return {
        "serving_default": {"user_id": users},
        "recommend": {"user_id": users, "k": k},
        "embed_query": {"user_id": users},
        "query_text": {"text": np.array([t.encode() for t in exports.texts], dtype=object),
                       "k": k},
        "query_image": {"image": np.array([exports.image, exports.image], dtype=object),
                        "k": k},
        "query_audio": {"audio": np.array([exports.audio], dtype=object), "k": k},
    }[signature]


def client_for(server, model: str, rest: bool, **kwargs) -> ServingClient:
    port = server.rest_port if rest else server.port
    return ServingClient(f"127.0.0.1:{port}", model, rest=rest, timeout=30, **kwargs)


def assert_same_outputs(served: dict, expected: dict) -> None:
    assert set(served) == set(expected)
    for alias, value in expected.items():
        if value.dtype == object:
            np.testing.assert_array_equal(served[alias], value, err_msg=alias)
        else:
            assert served[alias].dtype == value.dtype, alias
            np.testing.assert_allclose(served[alias], value, rtol=1e-6, atol=1e-7,
                                       err_msg=alias)


@pytest.mark.parametrize("rest", [False, True], ids=["grpc", "rest"])
@pytest.mark.parametrize("model", [MODEL, SCANN_MODEL], ids=["brute_force", "scann"])
@pytest.mark.parametrize("signature", SIGNATURES)
def test_every_signature_equals_in_process_model(server, in_process, tiny_exports, signature,
                                                 model, rest):
    inputs = signature_inputs(tiny_exports, signature)
    expected = in_process[model].call(signature, **inputs)
    with client_for(server, model, rest) as client:
        served = client.predict(signature, inputs)
    assert_same_outputs(served, expected)


def test_convenience_calls_match_signatures(server, in_process, tiny_exports):
    model = in_process[MODEL]
    with client_for(server, MODEL, rest=False) as client:
        top = client.recommend(tiny_exports.user_ids[0])
        assert top["item_ids"].shape == (1, tiny_exports.default_k)
        assert_same_outputs(top, model.recommend([tiny_exports.user_ids[0]]))
        text = client.query_text(tiny_exports.texts[0], k=3)
        assert text["item_ids"].shape == (1, 3)
        image = client.query_image(tiny_exports.image, k=4)
        assert image["scores"].shape == (1, 4)
        audio = client.query_audio([tiny_exports.audio] * 2, k=2)
        assert audio["scores"].shape == (2, 2)
        embedding = client.embed_query(tiny_exports.user_ids[:2])
        assert embedding.shape[0] == 2


def test_cross_modal_text_query_finds_its_own_item_first(server, in_process, tiny_exports):
    """Query-by-content works because text and items share one space (the model's own claim)."""
    with client_for(server, MODEL, rest=False) as client:
        served = client.query_text(tiny_exports.texts, k=5)
    expected = in_process[MODEL].call("query_text", text=np.array(tiny_exports.texts), k=5)
    np.testing.assert_array_equal(served["item_ids"], expected["item_ids"])


@pytest.mark.parametrize("rest", [False, True], ids=["grpc", "rest"])
def test_status_and_metadata_describe_the_served_version(server, rest):
    with client_for(server, MODEL, rest) as client:
        assert client.status() == [{"version": 1, "state": "AVAILABLE", "error_code": "OK",
                                    "error_message": ""}]
        signatures = client.metadata()
    assert set(SIGNATURES) <= set(signatures)
    assert signatures["query_text"]["inputs"] == {"text": ("DT_STRING", [-1]),
                                                  "k": ("DT_INT32", []),
                                                  "exclude_item_ids": ("DT_STRING", [-1, -1])}


def test_rest_metadata_and_status_json_have_tf_serving_layout(server):
    base = f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}"
    with urllib.request.urlopen(base, timeout=30) as response:
        status = json.loads(response.read())
    assert status == {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                                "status": {"error_code": "OK",
                                                           "error_message": ""}}]}
    with urllib.request.urlopen(base + "/versions/1/metadata", timeout=30) as response:
        metadata = json.loads(response.read())
    assert metadata["model_spec"]["name"] == MODEL
    assert metadata["model_spec"]["version"] == "1"
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"]["user_id"]["dtype"] == "DT_STRING"


def test_rest_row_format_answers_with_predictions(server, in_process, tiny_exports):
    """``instances`` (row format) works for one-input signatures, as in TF Serving."""
    body = {"signature_name": "serving_default", "instances": tiny_exports.user_ids[:2]}
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}/versions/1:predict",
        data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        predictions = json.loads(response.read())["predictions"]
    expected = in_process[MODEL].recommend(tiny_exports.user_ids[:2])
    assert [p["item_ids"] for p in predictions] == [
        [i.decode() for i in row] for row in expected["item_ids"]]
    np.testing.assert_array_equal(np.array([p["scores"] for p in predictions], np.float32),
                                  expected["scores"])


def test_specific_version_is_served_on_request(server, in_process, tiny_exports):
    with client_for(server, MODEL, rest=False, version=1) as client:
        served = client.recommend(tiny_exports.user_ids[:1], k=3)
    assert_same_outputs(served, in_process[MODEL].recommend(tiny_exports.user_ids[:1], k=3))
