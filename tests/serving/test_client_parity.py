"""The same ``ServingClient`` call gets the same answer over gRPC and REST: an empty exclusion
list, numpy integer inputs, a bad version, an unknown signature (whose status differs between
TF Serving's transports, but not the hint), ids with a trailing NUL, bad viewed content."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from tests.serving.conftest import MODEL, free_port, sample_png
from tests.serving.test_bad_requests import grpc_predict
from tfmmrec.errors import ServingError
from tfmmrec.export.warmup import predict_request
from tfmmrec.serving.client import ServingClient, ServingRequestError

TRANSPORTS = pytest.mark.parametrize("rest", [False, True], ids=["grpc", "rest"])


def client_for(server, rest: bool) -> ServingClient:
    port = server.rest_port if rest else server.port
    return ServingClient(f"127.0.0.1:{port}", MODEL, rest=rest, timeout=30)


@TRANSPORTS
def test_an_empty_exclude_list_is_no_exclusions(server, in_process, tiny_exports, rest):
    """REST sent ``[]`` as shape [0] (not [0, 0]) and failed; gRPC served it."""
    user = tiny_exports.user_ids[0]
    expected = in_process[MODEL].recommend([user], k=2)["item_ids"]
    with client_for(server, rest) as client:
        for exclude in ([], ()):
            np.testing.assert_array_equal(
                client.recommend([user], k=2, exclude=exclude)["item_ids"], expected)
            np.testing.assert_array_equal(
                client.recommend([user], exclude=exclude)["item_ids"],
                in_process[MODEL].recommend([user])["item_ids"])


@TRANSPORTS
def test_numpy_integer_scalars_are_served_by_predict(server, in_process, tiny_exports, rest):
    """gRPC refused ``np.int64(2)`` for the int32 ``k`` (REST typed the JSON number)."""
    users = np.array(tiny_exports.user_ids[:1], dtype=object)
    expected = in_process[MODEL].recommend(list(users), k=2)["item_ids"]
    with client_for(server, rest) as client:
        for k in (np.int64(2), np.uint16(2), np.array(2), np.int32(2), 2):
            served = client.predict("recommend", {"user_id": users, "k": k})
            np.testing.assert_array_equal(served["item_ids"], expected)


def test_a_numpy_integer_out_of_range_is_still_refused_by_the_server(server, tiny_exports):
    users = np.array(tiny_exports.user_ids[:1], dtype=object)
    with client_for(server, False) as client, pytest.raises(ServingRequestError) as raised:
        client.predict("recommend", {"user_id": users, "k": np.int64(2**40)})
    assert raised.value.code == "INVALID_ARGUMENT"
    assert raised.value.details == ("Expects arg[1] to be int32 but int64 is provided (input "
                                    "'k' of signature 'recommend')")


@pytest.mark.usefixtures("still_serving")
def test_the_grpc_dtype_error_names_the_input(server, tiny_exports):
    request = predict_request(MODEL, "recommend", {
        "user_id": np.array(tiny_exports.user_ids[:1], dtype=object), "k": np.float32(2)})
    with pytest.raises(grpc.RpcError) as raised:
        grpc_predict(server, request)
    assert raised.value.details() == ("Expects arg[1] to be int32 but float is provided (input "
                                      "'k' of signature 'recommend')")


@TRANSPORTS
@pytest.mark.parametrize("version", [-3, 0, 2**63, 2**64, 10**30, True, 1.5, "2", np.int64(-1)],
                         ids=["negative", "zero", "2**63", "2**64", "10**30", "bool", "float",
                              "string", "numpy_negative"])
def test_a_bad_version_is_refused_when_the_client_is_made(rest, version):
    """gRPC answered -3 with NOT_FOUND and REST with a 400; 2**64 raised a bare ValueError."""
    with pytest.raises(ServingError) as raised:
        ServingClient(f"127.0.0.1:{free_port()}", MODEL, version=version, rest=rest)
    assert type(raised.value) is ServingError
    assert str(raised.value) == (f"version must be an integer from 1 to {2**63 - 1} (a version "
                                 f"folder's number), got {version!r}")


@TRANSPORTS
def test_a_numpy_version_is_a_version(server, in_process, tiny_exports, rest):
    port = server.rest_port if rest else server.port
    with ServingClient(f"127.0.0.1:{port}", MODEL, version=np.int64(1), rest=rest,
                       timeout=30) as client:
        assert client.version == 1 and type(client.version) is int
        np.testing.assert_array_equal(client.recommend(tiny_exports.user_ids[:1])["item_ids"],
                                      in_process[MODEL].recommend(tiny_exports.user_ids[:1])[
                                          "item_ids"])


@TRANSPORTS
def test_an_unknown_signature_gets_the_signature_hint_on_both_transports(server, tiny_exports,
                                                                        rest):
    """TF Serving answers it FAILED_PRECONDITION over gRPC and 400 over REST; the statuses stay,
    the hint is the same."""
    with client_for(server, rest) as client, pytest.raises(ServingRequestError) as raised:
        client.predict("nope", {"user_id": tiny_exports.user_ids[:1]})
    assert raised.value.code == ("INVALID_ARGUMENT" if rest else "FAILED_PRECONDITION")
    assert "signature 'nope'" in str(raised.value)
    assert "the model has no such signature; `tfmmrec query --metadata` lists them" in \
        str(raised.value)
    assert "fix the request (inputs" not in str(raised.value)


@TRANSPORTS
def test_a_trailing_nul_stays_part_of_an_excluded_id(server, in_process, tiny_exports, rest):
    """numpy's ``astype(str)`` dropped it: ``"i0233\\x00"`` excluded ``i0233``."""
    user = tiny_exports.user_ids[0]
    top = in_process[MODEL].recommend([user], k=2)["item_ids"][0][0].decode()
    for exclude in ([[top + "\x00"]], [[(top + "\x00").encode()]]):
        assert in_process[MODEL].recommend([user], k=2, exclude=exclude)["item_ids"][0][0] == \
            top.encode()
        with client_for(server, rest) as client:
            assert client.recommend([user], k=2, exclude=exclude)["item_ids"][0][0] == \
                top.encode()


@pytest.mark.usefixtures("still_serving")
@TRANSPORTS
def test_bad_viewed_content_names_its_input(server, rest):
    """The image decoder's message named ``image:``, an input recommend_session does not have."""
    png = sample_png()
    inputs = {"session_item_ids": np.array([[""]], dtype=object),
              "viewed_image": np.array([png[:40]], dtype=object)}
    with client_for(server, rest) as client, pytest.raises(ServingRequestError) as raised:
        client.predict("recommend_session", inputs)
    assert raised.value.code == "INVALID_ARGUMENT"
    assert raised.value.details.startswith("viewed_image: "), raised.value.details


def test_in_process_bad_viewed_content_names_its_input_as_the_server_does(in_process):
    inputs = {"session_item_ids": np.array([[""]], dtype=object).astype(bytes),
              "viewed_image": np.array([sample_png()[:40]], dtype=object)}
    with pytest.raises(ServingError, match=r"^recommend_session: viewed_image: "):
        in_process[MODEL].call("recommend_session", **inputs)


@pytest.mark.parametrize("inputs", [
    {"user_id": np.array([["u0"]], dtype=object)},
    {"user_id": np.array(["u0"], dtype=object), "exclude_item_ids": np.array(["i0"], dtype=object)},
], ids=["user_id_rows", "exclude_as_a_vector"])
def test_an_input_of_the_wrong_rank_is_refused_in_process_as_the_server_does(server, in_process,
                                                                          inputs):
    """In process the graph said "In[0] is not a matrix" or "slice index 1 of dimension 0 out
    of bounds"; ``tfmmrec serve`` named the input and the shape it takes."""
    name = next(a for a in inputs if inputs[a].ndim != (2 if a == "exclude_item_ids" else 1))
    with pytest.raises(ServingError) as raised:
        in_process[MODEL].call("recommend", **inputs)
    with pytest.raises(grpc.RpcError) as served:
        grpc_predict(server, predict_request(MODEL, "recommend", inputs))
    assert str(raised.value) == f"recommend: {served.value.details()}"
    assert f"input '{name}' of signature 'recommend' has shape" in str(raised.value)


@TRANSPORTS
def test_a_user_id_that_is_not_utf8_is_refused_before_it_is_sent(server, in_process, rest):
    """In process it was a raw UnicodeDecodeError; a client sent it, to be served as an unknown
    user."""
    expected = r"^user_ids\[1\] is b'\\xff\\xfe' \(bytes\), not UTF-8 text$"
    with pytest.raises(ServingError, match=expected):
        in_process[MODEL].recommend(["u0", b"\xff\xfe"], k=2)
    with client_for(server, rest) as client, pytest.raises(ServingError, match=expected):
        client.recommend(["u0", b"\xff\xfe"], k=2)
