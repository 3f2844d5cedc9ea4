"""Parquet items tables whose string or binary cells are not UTF-8: one ``DataError`` naming
the file, row, id and column (as a CSV's undecodable line is named), never a pandas traceback,
whichever reader opens the table (``load_dataset``, the chunked ``ItemsStream``, ``validate``)."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data.folders import make_folder
from tfmmrec import cli
from tfmmrec.config import DataConfig
from tfmmrec.data import validate
from tfmmrec.data.dataset import load_dataset
from tfmmrec.data.stream import ItemsStream
from tfmmrec.errors import DataError

INTERACTIONS = "user_id,item_id\nu1,i1\nu1,i2\nu2,i3\n"
TITLES = [b"Starship", b"\xff\xfe", b"Riddle"]


def folder(tmp_path, table: pa.Table):
    """A dataset folder whose items table is ``table`` as items.parquet."""
    root = make_folder(tmp_path / "d", items=None, interactions=INTERACTIONS, users=None,
                       media=False)
    pq.write_table(table, root / "items.parquet")
    return root


def string_column(values: list[bytes]) -> pa.Array:
    """A Parquet string column holding ``values`` as they are (another writer's invalid
    UTF-8: pyarrow checks nothing when an array is built from buffers)."""
    raw = pa.array(values, pa.binary())
    return pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())


def error_of(call) -> str:
    with pytest.raises(DataError) as info:
        call()
    return str(info.value)


@pytest.mark.parametrize("titles", [pa.array(TITLES, pa.binary()), string_column(TITLES)],
                         ids=["binary", "string"])
def test_a_cell_that_is_not_utf8_names_the_file_row_id_and_column(tmp_path, titles):
    root = folder(tmp_path, pa.table({"item_id": ["i1", "i2", "i3"], "title": titles}))
    message = error_of(lambda: load_dataset(str(root)))
    assert message == (f"{root / 'items.parquet'}: 1 value(s) are not UTF-8 text: "
                       "items.parquet row 1 (item_id 'i2'), column 'title': b'\\xff\\xfe' "
                       "(byte 0xff at offset 0). Write text columns as UTF-8 strings (tfmmrec "
                       "reads text and media paths, not media bytes)")


def test_an_id_that_is_not_utf8_is_named_by_its_row(tmp_path):
    ids = pa.array([b"i1", b"i2\xff", b"i3"], pa.binary())
    root = folder(tmp_path, pa.table({"title": ["a", "b", "c"], "item_id": ids}))
    message = error_of(lambda: load_dataset(str(root)))
    assert "1 value(s) are not UTF-8 text: items.parquet row 1, column 'item_id': " \
           "b'i2\\xff' (byte 0xff at offset 2)" in message


def test_every_bad_cell_is_counted_and_long_values_are_cut(tmp_path):
    long = b"x" * 40 + b"\xff"
    root = folder(tmp_path, pa.table({
        "item_id": ["i1", "i2", "i3"], "title": pa.array(TITLES, pa.binary()),
        "description": pa.array([b"ok", None, long], pa.binary())}))
    message = error_of(lambda: load_dataset(str(root)))
    assert "2 value(s) are not UTF-8 text" in message
    assert f"items.parquet row 2 (item_id 'i3'), column 'description': {long[:16]!r}... " \
           "(byte 0xff at offset 40)" in message


def test_the_chunked_stream_names_a_row_of_a_later_chunk(tmp_path):
    titles = [b"a", b"b", b"c", b"\xff"]
    root = folder(tmp_path, pa.table({"item_id": ["i1", "i2", "i3", "i4"],
                                      "title": pa.array(titles, pa.binary())}))
    message = error_of(lambda: ItemsStream(DataConfig(path=str(root)), rows=2).summary())
    assert "items.parquet row 3 (item_id 'i4'), column 'title': b'\\xff'" in message


def test_validate_prints_one_error_line_and_no_traceback(tmp_path, capsys):
    root = folder(tmp_path, pa.table({"item_id": ["i1", "i2", "i3"],
                                      "title": pa.array(TITLES, pa.binary())}))
    assert cli.main(["validate", "--set", f"data.path={root}"]) == 2
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if line.startswith("error")]
    assert "items.parquet row 1 (item_id 'i2'), column 'title'" in line
    assert "Traceback" not in err


def test_utf8_binary_cells_read_as_their_text(tmp_path):
    """A binary column that holds UTF-8 is text, as a string column is (pandas decoded it
    before, deep in column inference and text joining)."""
    titles = pa.array(["Größe".encode(), b"Tides", None], pa.binary())
    root = folder(tmp_path, pa.table({"item_id": pa.array([b"i1", b"i2", b"i3"]),
                                      "title": titles}))
    catalog = load_dataset(str(root)).catalog
    assert catalog.item_ids.tolist() == ["i1", "i2", "i3"]
    assert catalog.texts.tolist() == ["Größe", "Tides", ""]


def test_a_pandas_written_table_reads_as_pandas_reads_it(tmp_path):
    """The check reads the Arrow table itself: what pandas wrote (its index, bytes cells)
    still comes back as ``pd.read_parquet`` gives it, decoded, with a fresh row index."""
    frame = pd.DataFrame({"item_id": ["a", "b"], "title": [b"x", None], "year": [1995, None]},
                         index=[5, 7])
    path = tmp_path / "items.parquet"
    frame.to_parquet(path)
    expected = pd.read_parquet(path).assign(title=["x", None]).reset_index(drop=True)
    got = validate.read_table(path, id_columns=["item_id"])
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert list(got.columns) == ["item_id", "title", "year"]
