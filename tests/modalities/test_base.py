"""``ModalitySpec.request_values``: each modality checks the query values it is given itself.

A client (``ServingClient.query``, ``tfmmrec query``) sends what the spec returns; a value the
spec cannot encode must fail there, with the one line ``ExportedModel`` gives for it (the
client-side half is in tests/serving/test_client_checks.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tfmmrec import modalities
from tfmmrec.errors import ServingError
from tfmmrec.modalities.base import request_batch


@pytest.mark.parametrize(("modality", "values", "expected"), [
    ("text", ["jazz", 1], "query_text: text[1] is 1 (int), not a string"),
    ("text", 5, "query_text: text[0] is 5 (int), not a string"),
    ("text", [Path("notes.txt")],
     "query_text: text[0] is PosixPath('notes.txt') (PosixPath), not a string"),
    ("facets", [None], "query_facets: facets[0] is None (NoneType), not a string"),
    ("image", [None], "query_image: image[0] is None (NoneType), not a string"),
    ("image", None, "query_image: image[0] is None (NoneType), not a string"),
    ("audio", [b"RIFF", 2.5], "query_audio: audio[1] is 2.5 (float), not a string"),
])
def test_a_value_the_modality_cannot_send_is_refused_naming_the_input(modality, values,
                                                                      expected):
    with pytest.raises(ServingError) as raised:
        modalities.get(modality).request_values(values)
    assert str(raised.value) == expected


def test_a_file_modality_refuses_a_bad_value_before_reading_any_file(tmp_path):
    """The whole batch is checked first: a missing file listed before ``None`` is not what
    the error is about."""
    with pytest.raises(ServingError, match=r"^query_image: image\[1\] is None"):
        modalities.get("image").request_values([tmp_path / "missing.png", None])


def test_a_file_modality_sends_paths_as_file_contents_and_bytes_as_they_are(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png bytes")
    request = modalities.get("image").request_values(
        [tmp_path / "a.png", str(tmp_path / "a.png"), b"raw"])
    assert request.dtype == object and request.tolist() == [b"png bytes", b"png bytes", b"raw"]
    assert modalities.get("image").request_values(tmp_path / "a.png").tolist() == [b"png bytes"]


def test_text_is_sent_as_strings_one_value_or_many():
    text = modalities.get("text")
    assert text.request_values("jazz").tolist() == ["jazz"]
    assert text.request_values(v for v in ("a", b"b")).tolist() == ["a", b"b"]
    assert text.request_values(np.array(["a", "b"])).tolist() == ["a", "b"]


@pytest.mark.parametrize(("values", "batch"), [
    ("a", ["a"]), (b"a", [b"a"]), (Path("a"), [Path("a")]), (None, [None]), (5, [5]),
    (("a", "b"), ["a", "b"]), ([], []),
])
def test_request_batch_makes_a_lone_value_a_batch_of_one(values, batch):
    assert request_batch(values) == batch
