"""Request ids have a length limit of their own (``export.limits.max_id_bytes``), compiled into
every export's graph: every string id input of every signature is refused, naming the input,
the limit and the longest id's length, before it is hashed or looked up (texts had their 64 KiB
cap; ids had none)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.serving.conftest import MODEL, SCANN_MODEL, rest_predict
from tfmmrec.config import ServingLimitsConfig
from tfmmrec.errors import ServingError

LIMIT = ServingLimitsConfig().max_id_bytes
TOO_LONG = "x" * (LIMIT + 1)


def ids(*values: str) -> np.ndarray:
    return np.array([v.encode() for v in values], dtype=object)


def refusal(signature: str, name: str, length: int = LIMIT + 1) -> str:
    return (f"{signature}: {name}: an id is longer than export.limits.max_id_bytes={LIMIT}; "
            f"the longest has (bytes): {length}")


# (signature, inputs, the input named)
CASES = {
    "default_user": ("serving_default", {"user_id": ids("u000", TOO_LONG)}, "user_id"),
    "recommend_user": ("recommend", {"user_id": ids(TOO_LONG)}, "user_id"),
    "recommend_exclusion": ("recommend", {"user_id": ids("u000"),
                                          "exclude_item_ids": ids(TOO_LONG)[None, :]},
                            "exclude_item_ids"),
    "session_item": ("recommend_session", {"session_item_ids": ids("i0001", TOO_LONG)[None, :]},
                     "session_item_ids"),
    "session_user": ("recommend_session", {"session_item_ids": ids("i0001")[None, :],
                                           "user_id": ids(TOO_LONG)}, "user_id"),
    "session_exclusion": ("recommend_session", {"session_item_ids": ids("i0001")[None, :],
                                                "exclude_item_ids": ids(TOO_LONG)[None, :]},
                          "exclude_item_ids"),
    "query_exclusion": ("query_text", {"text": ids("a film"),
                                       "exclude_item_ids": ids(TOO_LONG)[None, :]},
                        "exclude_item_ids"),
    "embed_query": ("embed_query", {"user_id": ids(TOO_LONG)}, "user_id"),
    "embed_items": ("embed_items", {"item_id": ids("i0001", TOO_LONG)}, "item_id"),
}


@pytest.mark.parametrize("model", [MODEL, SCANN_MODEL])
@pytest.mark.parametrize("case", sorted(CASES))
def test_an_id_over_the_limit_is_refused_naming_input_limit_and_length(in_process, model, case):
    signature, inputs, name = CASES[case]
    with pytest.raises(ServingError) as raised:
        in_process[model].call(signature, **inputs)
    assert str(raised.value) == refusal(signature, name)


def test_the_limit_counts_utf8_bytes_and_an_id_at_it_is_served(in_process):
    model = in_process[MODEL]
    at_limit = model.call("recommend", user_id=ids("x" * LIMIT), k=np.int32(3))
    assert at_limit["item_ids"].shape == (1, 3)  # an unknown user: the cold-start list
    assert model.call("embed_items", item_id=ids("é" * (LIMIT // 2)))["found"].tolist() == [
        False]
    with pytest.raises(ServingError) as raised:  # LIMIT // 2 + 1 characters, LIMIT + 2 bytes
        model.call("embed_items", item_id=ids("é" * (LIMIT // 2 + 1)))
    assert str(raised.value) == refusal("embed_items", "item_id", LIMIT + 2)


def test_the_limit_is_written_into_the_export_metadata(in_process):
    metadata = in_process[MODEL].metadata
    assert metadata["limits"]["max_id_bytes"] == LIMIT
    assert metadata["graph_constants"]["max_id_bytes"] == LIMIT


@pytest.mark.usefixtures("still_serving")
def test_rest_answers_400_naming_the_limit(server, tiny_exports):
    status, payload = rest_predict(server, {"signature_name": "recommend", "inputs": {
        "user_id": [tiny_exports.user_ids[0]], "exclude_item_ids": [[TOO_LONG]]}})
    assert status == 400, payload
    assert payload["error"] == (f"exclude_item_ids: an id is longer than export.limits."
                                f"max_id_bytes={LIMIT}; the longest has (bytes): {LIMIT + 1}")
    status, payload = rest_predict(server, {"instances": [TOO_LONG]})
    assert status == 400 and f"export.limits.max_id_bytes={LIMIT}" in payload["error"]
    status, _ = rest_predict(server, {"instances": ["x" * LIMIT]})
    assert status == 200
