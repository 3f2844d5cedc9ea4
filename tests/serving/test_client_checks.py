"""``ServingClient`` refuses what ``ExportedModel`` refuses — a k that is not an int32 integer,
an id or content value that is not a string — with the same one-line ``ServingError``, over
gRPC and REST alike, before anything is sent."""

from __future__ import annotations

import numpy as np
import pytest

from tests.serving.conftest import MODEL, free_port
from tfmmrec.errors import ServingError
from tfmmrec.serving.client import ServingClient, _explain

K_MESSAGE = "k must be an integer from 1 to the export's max_k, got "

# (client call, the ExportedModel call it mirrors, the one line both raise)
BAD = {
    "k_float": (lambda c: c.recommend(["u001"], k=2.5),
                lambda m: m.recommend(["u001"], k=2.5), f"recommend: {K_MESSAGE}2.5"),
    "k_string": (lambda c: c.recommend(["u001"], k="2"),
                 lambda m: m.recommend(["u001"], k="2"), f"recommend: {K_MESSAGE}'2'"),
    "k_bool": (lambda c: c.recommend(["u001"], k=True),
               lambda m: m.recommend(["u001"], k=True), f"recommend: {K_MESSAGE}True"),
    "k_too_big": (lambda c: c.recommend(["u001"], k=10**10),
                  lambda m: m.recommend(["u001"], k=10**10),
                  f"recommend: {K_MESSAGE}10000000000"),
    "k_huge": (lambda c: c.recommend(["u001"], k=10**30),
               lambda m: m.recommend(["u001"], k=10**30), f"recommend: {K_MESSAGE}{10**30}"),
    "k_zero": (lambda c: c.recommend(["u001"], k=0),
               lambda m: m.recommend(["u001"], k=0), f"recommend: {K_MESSAGE}0"),
    "int_user_ids": (lambda c: c.recommend([1, 2]), lambda m: m.recommend([1, 2]),
                     "user_ids[0] is 1 (int), not a string"),
    "none_user_id": (lambda c: c.recommend(["u001", None], k=2),
                     lambda m: m.recommend(["u001", None], k=2),
                     "user_ids[1] is None (NoneType), not a string"),
    "int_exclude": (lambda c: c.recommend(["u001"], exclude=[["i1", 3]]),
                    lambda m: m.recommend(["u001"], exclude=[["i1", 3]]),
                    "exclude[0][1] is 3 (int), not a string"),
    "session_k_float": (lambda c: c.recommend_session([["i1"]], k=1.0),
                        lambda m: m.recommend_session([["i1"]], k=1.0),
                        f"recommend_session: {K_MESSAGE}1.0"),
    "session_int_item": (lambda c: c.recommend_session([["i1", 2]]),
                         lambda m: m.recommend_session([["i1", 2]]),
                         "sessions[0][1] is 2 (int), not a string"),
    "session_int_user": (lambda c: c.recommend_session([["i1"]], [7]),
                         lambda m: m.recommend_session([["i1"]], [7]),
                         "user_ids[0] is 7 (int), not a string"),
    "text_int": (lambda c: c.query_text(["jazz", 1]),
                 lambda m: m.call("query_text", text=np.array(["jazz", 1], dtype=object)),
                 "query_text: text[1] is 1 (int), not a string"),
    "text_k_string": (lambda c: c.query("text", ["jazz"], k="3"),
                      lambda m: m.call("query_text", text=np.array(["jazz"]), k="3"),
                      f"query_text: {K_MESSAGE}'3'"),
    "image_none": (lambda c: c.query_image([None]),
                   lambda m: m.call("query_image", image=np.array([None], dtype=object)),
                   "query_image: image[0] is None (NoneType), not a string"),
    "embed_int": (lambda c: c.embed_query([1]),
                  lambda m: m.call("embed_query", user_id=np.array([1], dtype=object)),
                  "embed_query: user_id[0] is 1 (int), not a string"),
    # exclude / sessions: a list of lists of strings, refused otherwise before anything is sent
    "session_empty": (lambda c: c.recommend_session([]), lambda m: m.recommend_session([]),
                      "recommend_session: sessions is an empty batch (give one list of recent "
                      "item ids per session)"),
    "exclude_not_utf8": (lambda c: c.recommend(["u001"], exclude=[[b"\xff"]]),
                         lambda m: m.recommend(["u001"], exclude=[[b"\xff"]]),
                         "exclude[0][0] is b'\\xff' (bytes), not UTF-8 text"),
    "session_not_utf8": (lambda c: c.recommend_session([[b"i1", b"\xff"]]),
                         lambda m: m.recommend_session([[b"i1", b"\xff"]]),
                         "sessions[0][1] is b'\\xff' (bytes), not UTF-8 text"),
    "exclude_none_row": (lambda c: c.recommend(["u001"], exclude=[None]),
                         lambda m: m.recommend(["u001"], exclude=[None]),
                         "exclude[0] is None (NoneType), not a list of item ids"),
    "exclude_int": (lambda c: c.recommend(["u001"], exclude=5),
                    lambda m: m.recommend(["u001"], exclude=5),
                    "exclude is 5 (int), not a list of item id lists"),
    "exclude_dict_row": (lambda c: c.recommend(["u001"], exclude=[{"i1": 1}]),
                         lambda m: m.recommend(["u001"], exclude=[{"i1": 1}]),
                         "exclude[0] is {'i1': 1} (dict), not a list of item ids"),
    "user_ids_dict": (lambda c: c.recommend({"a": 1}), lambda m: m.recommend({"a": 1}),
                      "user_ids is {'a': 1} (dict), not a list of ids"),
    "user_ids_set": (lambda c: c.recommend({"a"}), lambda m: m.recommend({"a"}),
                     "user_ids is {'a'} (set), not a list of ids"),
}
# embed_query has no ExportedModel shorthand: its call names the input, the client the argument
CLIENT_MESSAGE = {"embed_int": "user_ids[0] is 1 (int), not a string"}


@pytest.mark.parametrize("rest", [False, True], ids=["grpc", "rest"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_client_refuses_before_sending(case, rest):
    """Nothing listens on the port: a request that was sent would fail as UNAVAILABLE (a
    ``ServingRequestError``), so a plain ``ServingError`` means it was refused first."""
    call, _, expected = BAD[case]
    with ServingClient(f"127.0.0.1:{free_port()}", MODEL, rest=rest, timeout=5) as client, \
            pytest.raises(ServingError) as raised:
        call(client)
    assert type(raised.value) is ServingError
    assert str(raised.value) == CLIENT_MESSAGE.get(case, expected)


@pytest.mark.parametrize("case", sorted(BAD))
def test_exported_model_refuses_the_same(in_process, case):
    _, call, expected = BAD[case]
    with pytest.raises(ServingError) as raised:
        call(in_process[MODEL])
    assert str(raised.value) == expected


@pytest.mark.parametrize("rest", [False, True], ids=["grpc", "rest"])
def test_numpy_integers_and_lone_ids_are_still_served(server, in_process, tiny_exports, rest):
    port = server.rest_port if rest else server.port
    user = tiny_exports.user_ids[0]
    expected = in_process[MODEL].recommend([user], k=3)["item_ids"]
    with ServingClient(f"127.0.0.1:{port}", MODEL, rest=rest, timeout=30) as client:
        for k in (np.int64(3), np.uint8(3), np.array(3)):
            np.testing.assert_array_equal(client.recommend([user], k=k)["item_ids"], expected)
        np.testing.assert_array_equal(client.recommend(user, k=3)["item_ids"], expected)


@pytest.mark.parametrize("details", [
    "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:8501: Failed "
    "parsing HTTP/2 (Expected SETTINGS frame as the first frame, got frame type 79)",
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:8501: Trying to "
    "connect an http1.x server (HTTP status 400)",
])
def test_grpc_answered_by_http1_suggests_rest(details):
    """Both gRPC releases' wordings of an HTTP/1.x answer: the REST port, not a dead server."""
    message = _explain("UNAVAILABLE", details, "what", "127.0.0.1:8501", 10.0, rest=False)
    assert "something answers HTTP/1.x there" in message and "--rest" in message
    assert "running there?" not in message
    refused = _explain("UNAVAILABLE", "connection refused", "what", "h:1", 10.0, rest=False)
    assert "is `tfmmrec serve` or tensorflow_model_server running there?" in refused


def test_a_registered_modality_with_its_own_encoding_gets_its_values_as_given():
    """Only the built-in encodings (strings, paths, bytes) are checked value by value: a
    registered modality's ``request_values`` may take arrays and encodes them itself."""
    from tfmmrec.serving.client import _content

    class VectorSpec:
        def request_values(self, values):
            return np.array([np.asarray(v, np.float32).tobytes() for v in values], object)

    request = _content(VectorSpec(), np.zeros((2, 3)), "vector")
    assert len(request) == 2 and request[0] == np.zeros(3, np.float32).tobytes()


class _LimitedClient(ServingClient):
    """A client whose ``embed_query`` is a server refusing batches over ``limit`` rows and
    giving every id but the unknown ones (and "") its own query."""

    def __init__(self, limit: int):
        super().__init__("127.0.0.1:1", rest=True)
        self.limit, self.batches = limit, []

    def embed_query(self, user_ids):
        self.batches.append(list(user_ids))
        if len(user_ids) > self.limit:
            raise ServingError(f"embed_query: batch larger than {self.limit}", "INVALID_ARGUMENT")
        return np.array([[0.0] if u in ("", "nobody") else [float(len(u))] for u in user_ids])


@pytest.mark.parametrize("users", [["u1"], ["u1", "nobody"], ["u1", "u22", "nobody", "u4444"]])
def test_known_users_fits_a_batch_of_exactly_the_servers_limit(users):
    client = _LimitedClient(limit=max(len(users), 2))
    assert client.known_users(users).tolist() == [u != "nobody" for u in users]
    assert all("" in batch and len(batch) <= client.limit for batch in client.batches)
    assert [u for batch in client.batches for u in batch if u] == users


def test_known_items_names_its_own_argument():
    """It checked item ids with the user-id helper, so a bad item id was named user_ids[0]."""
    with pytest.raises(ServingError, match=r"^item_ids\[0\] is 1 \(int\), not a string"):
        ServingClient("127.0.0.1:1", rest=True).known_items([1])
