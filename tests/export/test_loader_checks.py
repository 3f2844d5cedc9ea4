"""The loader's request checks that ``ExportedModel`` and ``ServingClient`` share: ``padded``
turns ragged id lists into the request's ""-padded rows without changing an id, and refuses
anything that is not a list of lists of strings with a ``ServingError`` naming the argument."""

from __future__ import annotations

import numpy as np
import pytest

from tfmmrec.errors import ServingError
from tfmmrec.export.loader import check_ordered, padded, session_rows


def test_padded_rows_keep_every_id_as_sent():
    rows = padded([["i1", b"i2\x00"], (), np.array(["i3\x00"], dtype=object)], "exclude")
    assert rows.dtype == object and rows.shape == (3, 2)
    assert rows.tolist() == [["i1", "i2\x00"], ["", ""], ["i3\x00", ""]]
    assert all(type(item) is str for item in rows.ravel())


def test_padded_without_ids_has_zero_width():
    assert padded([], "exclude").shape == (0, 0)
    assert padded([[], []], "exclude").shape == (2, 0)


@pytest.mark.parametrize(("lists", "message"), [
    ("i1", "exclude is a single string ('i1'); pass one list of item ids per row, e.g. "
           "[['i1']]"),
    (5, "exclude is 5 (int), not a list of item id lists"),
    (None, "exclude is None (NoneType), not a list of item id lists"),
    ({"i1": 1}, "exclude is {'i1': 1} (dict), not a list of item id lists"),
    ([["i1"], "i2"], "exclude[1] is a string ('i2'), not a list of item ids; pass one list per "
                     "row, e.g. [['i2']]"),
    ([None], "exclude[0] is None (NoneType), not a list of item ids"),
    ([{"i1", "i2"}], "exclude[0] is {"),
    ([["i1", 7]], "exclude[0][1] is 7 (int), not a string"),
    ([["i1", None]], "exclude[0][1] is None (NoneType), not a string"),
    ([[["i1"]]], "exclude[0][0] is ['i1'] (list), not a string"),
    ([[b"\xff"]], "exclude[0][0] is b'\\xff' (bytes), not UTF-8 text"),
], ids=["string", "int", "none", "dict", "string_row", "none_row", "set_row", "int_id",
        "none_id", "nested_row", "not_utf8"])
def test_padded_refuses_what_is_not_lists_of_strings(lists, message):
    with pytest.raises(ServingError) as raised:
        padded(lists, "exclude")
    assert str(raised.value).startswith(message), str(raised.value)


def test_session_rows_refuse_an_empty_batch():
    assert session_rows([["i1"]]).tolist() == [["i1"]]
    with pytest.raises(ServingError, match=r"^recommend_session: sessions is an empty batch"):
        session_rows([])


@pytest.mark.parametrize("values", [{"a": 1}, {"a"}, frozenset(), 3])
def test_check_ordered_refuses_dicts_sets_and_scalars(values):
    with pytest.raises(ServingError, match=r"^user_ids is .*, not a list of ids$"):
        check_ordered(values, "user_ids", "ids")


@pytest.mark.parametrize("values", [["a"], ("a",), np.array(["a"]), iter(["a"])])
def test_check_ordered_takes_sequences_arrays_and_iterators(values):
    check_ordered(values, "user_ids", "ids")
