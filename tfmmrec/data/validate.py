"""Data layer, first step: read a dataset folder's tables and reject bad input clearly.

Every error names the file, the row (as a line number for CSV/JSONL) and the offending value, so
a user can fix their catalogue without reading a TensorFlow traceback.
"""

from __future__ import annotations

import array
import contextlib
import functools
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tfmmrec.errors import DataError, MediaDecodeError, cut, shown

if TYPE_CHECKING:
    from tfmmrec.config import ServingLimitsConfig

logger = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")  # what read_table reads
ITEM_TABLE_NAMES = tuple(f"items{suffix}" for suffix in TABLE_SUFFIXES)
DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}
SHOW_AT_MOST = 5
PAIR_COLUMNS = ("user_id", "item_id")  # one interaction per pair (data.duplicate_interactions)


def row_label(path: Path, index: int) -> str:
    """Human location of a data row: line numbers for text tables (CSV has a header line, and
    a quoted field may span lines: the row's first line, :func:`_csv_row_lines`)."""
    if path.suffix == ".csv":
        lines = _csv_row_lines(path)
        return f"{path.name} line {lines[index] if index < len(lines) else index + 2}"
    if path.suffix == ".jsonl":
        return f"{path.name} line {index + 1}"
    return f"{path.name} row {index}"


def _csv_row_lines(path: Path) -> array.array:
    """Each data row's first physical line in a CSV file (pandas numbers rows, and a quoted
    field with a newline moved every later label up a line). Read once per file version,
    when a label is first needed; blank lines are skipped, as pandas skips them."""
    try:
        info = path.stat()
    except OSError:
        return array.array("L")
    return _csv_row_lines_of(str(path), info.st_mtime_ns, info.st_size)


@functools.lru_cache(maxsize=4)
def _csv_row_lines_of(path: str, mtime_ns: int, size: int) -> array.array:
    import csv

    starts = array.array("L")
    try:
        with open(path, encoding="utf-8-sig", newline="") as file:
            reader = csv.reader(file)
            end, header = 0, False
            for row in reader:
                if row and header:
                    starts.append(end + 1)
                header |= bool(row)
                end = reader.line_num
    except (OSError, UnicodeDecodeError, csv.Error):
        pass  # an unreadable file is named elsewhere; labels fall back to index + 2
    return starts


def read_table(path: Path, id_columns: Sequence[str] = (),
               all_strings: bool = False) -> pd.DataFrame:
    """Read a CSV/JSONL/Parquet table with id columns as strings; never half-parse silently.

    ``all_strings`` reads every CSV column as the text written in the file (the items table:
    a ``year`` column with one blank cell would otherwise become floats, and the text tower
    would read "1995.0"), and every JSONL value as JSON gives it, untyped (pandas guessed
    types per chunk: "007" became 7, a ``modified`` column dates, an int column with a null
    floats, so a streamed table read otherwise than the whole one).
    """
    return next(read_table_chunks(path, id_columns, all_strings))


def read_table_chunks(path: Path, id_columns: Sequence[str] = (), all_strings: bool = False,
                      rows: int | None = None) -> Iterator[pd.DataFrame]:
    """:func:`read_table` in chunks of ``rows`` rows (``None``: one chunk, the whole table),
    parsed the same way; each chunk's index is its rows' position in the whole table, so the
    checks below name the right line."""
    if not path.is_file():
        raise DataError(f"table not found: {path}")
    dtypes = {column: "string" for column in id_columns}
    try:
        if path.suffix == ".csv":
            # index_col=False: rows with a trailing empty field ("a,b,c,") parse as their
            # header says; without it pandas makes the first column the index and shifts
            # every field one column left. A non-empty extra field is an error (below).
            dtypes |= _padded_names(_check_unique_header(path), id_columns)
            with _extra_fields_are_errors():
                chunks = pd.read_csv(path, dtype=str if all_strings else dtypes,
                                     keep_default_na=False, na_values=[""], chunksize=rows,
                                     index_col=False)
        elif path.suffix == ".jsonl" and all_strings:
            chunks = _jsonl_object_chunks(path, rows)
        elif path.suffix == ".jsonl":
            dtypes |= _padded_names(_first_jsonl_keys(path), id_columns)
            chunks = pd.read_json(path, lines=True, dtype=dtypes, chunksize=rows)
        elif path.suffix == ".parquet":
            chunks = _parquet_chunks(path, rows, id_columns[0] if id_columns else None)
        else:
            raise DataError(f"unsupported table format {path.suffix!r} for {path}: "
                            "use .csv, .jsonl or .parquet")
        if not isinstance(chunks, Iterator):
            chunks = iter([chunks])
        start = 0
        while True:
            with _extra_fields_are_errors():
                frame = next(chunks, None)
            if frame is None:
                break
            frame.index = pd.RangeIndex(start, start + len(frame))
            frame.columns = _stripped_names(frame.columns, path)
            if start == 0 and frame.empty:
                break
            start += len(frame)
            for column in id_columns:
                if column in frame.columns:
                    frame[column] = frame[column].astype("string").str.strip()
            yield frame
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty: it needs a header and at least one row") from None
    except Exception as exc:  # pandas raises many types; all mean "this file is not a table"
        raise DataError(f"cannot read {path}: {_first_bad_line(path) or exc}") from None
    if start == 0:
        raise DataError(f"{path} is empty: it needs a header and at least one row")


def _check_unique_header(path: Path) -> list[str]:
    """pandas renames a repeated CSV header (``rating,rating`` → ``rating``, ``rating.1``),
    so the second column was read under a name no setting asks for, or silently dropped.
    Names are compared as :func:`_stripped_names` reads them (``rating`` and `` rating`` are
    one name). Returns the header's names as written."""
    header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
    names = [str(name) for name in header.iloc[0]] if len(header) else []
    # empty names (a spreadsheet's blank trailing columns) are pandas' "Unnamed: N", distinct
    stripped = [name.strip() for name in names]
    repeated = sorted({name for name in stripped if name and stripped.count(name) > 1})
    if repeated:
        spellings = [shown(written) for name in repeated for written in
                     dict.fromkeys(w for w, s in zip(names, stripped, strict=True) if s == name)]
        if len(spellings) == len(repeated):  # each written the same way every time
            raise DataError(f"{path}: the header names {', '.join(spellings)} more than once; "
                            "give every column its own name")
        raise DataError(f"{path}: the header names {', '.join(map(shown, repeated))} more than "
                        f"once (written {', '.join(spellings)}; spaces around a column name are "
                        "ignored); give every column its own name")
    return names


def _stripped_names(columns: pd.Index, path: Path) -> list:
    """Column names without surrounding whitespace (a header `` item_id`` is ``item_id``, as
    ids are read stripped); two names that become one are refused, naming both as written."""
    # a blank name stays as it is (pandas names an empty one "Unnamed: N")
    names = [name.strip() if isinstance(name, str) and name.strip() else name
             for name in columns]
    seen: dict = {}
    for written, name in zip(columns, names, strict=True):
        # (a name repeated exactly as written is the CSV header check's, or a Parquet file's)
        if name in seen and not seen[name] == written == name:
            raise DataError(f"{path}: columns {shown(seen[name])} and {shown(written)} are both "
                            f"named {shown(name)} once the spaces around them are removed; "
                            "give every column its own name")
        seen.setdefault(name, written)
    return names


def _padded_names(names: Sequence, id_columns: Sequence[str]) -> dict[str, str]:
    """``{name as written: "string"}`` for the header names that are one of ``id_columns``
    but for surrounding whitespace, so that id column too is read as text (``001`` stays
    ``001``)."""
    return {name: "string" for name in names
            if isinstance(name, str) and name != name.strip() and name.strip() in id_columns}


def _jsonl_object_chunks(path: Path, rows: int | None) -> Iterator[pd.DataFrame]:
    """A JSONL table's objects in frames of ``rows`` (None: one), each value the Python
    object JSON gives (no type guessed, no date converted: the same in every chunk); a line
    that is not a JSON object raises (the caller names it)."""
    import json

    records: list[dict] = []
    yielded = False
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("a line is not a JSON object")
            records.append(record)
            if rows and len(records) == rows:
                yield pd.DataFrame(records, dtype=object)
                records, yielded = [], True
    if records or not yielded:
        yield pd.DataFrame(records, dtype=object)


def _first_jsonl_keys(path: Path) -> list[str]:
    """The keys of a JSONL table's first non-blank line, as written ([] if it is not a JSON
    object: reading the table names that line)."""
    import json

    try:
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    row = json.loads(line)
                    return list(row) if isinstance(row, dict) else []
    except (OSError, ValueError):
        pass
    return []


@contextlib.contextmanager
def _extra_fields_are_errors():
    """pandas only warns (and drops the field) when a CSV row has a non-empty field beyond
    its header under ``index_col=False``: raise instead (:func:`_first_bad_line` names it)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)
        yield


def not_utf8(number: int, line: bytes, exc: UnicodeDecodeError) -> str:
    """What an error says of a line of a text file that is not UTF-8."""
    return (f"line {number} is not UTF-8 text (byte 0x{line[exc.start]:02x} at column "
            f"{exc.start + 1}): save the file as UTF-8")


def _first_bad_line(path: Path) -> str | None:
    """Where a text table stops being readable, for the error message: the first line that
    is not UTF-8 (pandas only gives a byte offset into its buffer) or, in JSONL, not one JSON
    object (pandas gives a character position). Read line by line; None if every line is."""
    import json

    if path.suffix not in (".csv", ".jsonl"):
        return None
    header, hint = None, ""
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return not_utf8(number, raw, exc)
            if path.suffix == ".csv":
                fields = _csv_field_count(text)
                if number == 1:
                    header, hint = fields, (delimiter_hint(text) if fields == 1 else "")
                elif fields is not None and header is not None and fields > header:
                    return (f"line {number} has {fields} fields, the header {header}: a "
                            "field beyond the header's columns (quote fields that hold "
                            f"commas, or name the extra column in the header){hint}")
            if path.suffix == ".jsonl" and text.strip():
                try:
                    row = json.loads(text)
                except ValueError as exc:
                    return f"line {number} is not a JSON object ({exc})"
                if not isinstance(row, dict):
                    return f"line {number} is a JSON {type(row).__name__}, not an object"
    return None


def _csv_field_count(line: str) -> int | None:
    """Fields of one CSV line, trailing empty ones not counted (they parse as the header
    says); None for a line the csv module cannot split alone (a quoted field spanning lines)."""
    import csv

    try:
        row = next(csv.reader([line]), [])
    except csv.Error:
        return None
    while row and row[-1] == "":
        row.pop()
    return len(row)


def _parquet_chunks(path: Path, rows: int | None,
                    id_column: str | None) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    if rows is None:
        yield _utf8_frame(pq.read_table(path), path, 0, id_column)
        return
    start = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
        yield _utf8_frame(batch, path, start, id_column)
        start += batch.num_rows


def _utf8_frame(table, path: Path, start: int = 0, id_column: str | None = None
                ) -> pd.DataFrame:
    """An Arrow table (or record batch: rows ``start`` on of the file) as pandas, its string
    and binary columns as UTF-8 text, for every reader of a Parquet table.

    A binary column would reach pandas as ``bytes`` (decoded later, deep in a check, with a
    ``UnicodeDecodeError`` traceback) and a string column holding other bytes fails pandas'
    conversion without saying where. Either is one ``DataError`` naming the file and each bad
    cell's row, id and column, as a CSV's undecodable line is named (:func:`not_utf8`)."""
    import pyarrow as pa

    bad: list[str] = []
    for index, field in enumerate(table.schema):
        if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
            column = table.column(index)
            text_type = pa.large_string() if pa.types.is_large_binary(field.type) else pa.string()
            try:
                table = table.set_column(index, field.with_type(text_type),
                                         column.cast(text_type))
            except pa.ArrowInvalid:
                bad += _undecodable(table, path, start, field.name, column.to_pylist(),
                                    id_column)
    # checked before pandas: its Arrow-backed strings convert without looking at the bytes
    bad += _undecodable_strings(table, path, start, id_column)
    if not bad:
        return table.to_pandas()
    raise DataError(f"{path}: {len(bad)} value(s) are not UTF-8 text: "
                    f"{'; '.join(bad[:SHOW_AT_MOST])}. Write text columns as UTF-8 "
                    "strings (tfmmrec reads text and media paths, not media bytes)")


def _undecodable_strings(table, path: Path, start: int, id_column: str | None) -> list[str]:
    """Where the string columns' cells that are not UTF-8 are (columns declared as text that a
    writer filled with other bytes)."""
    import pyarrow as pa

    bad: list[str] = []
    for index, field in enumerate(table.schema):
        if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            continue
        column = table.column(index)
        try:
            column.validate(full=True)
        except pa.ArrowInvalid:
            raw = pa.large_binary() if pa.types.is_large_string(field.type) else pa.binary()
            bad += _undecodable(table, path, start, field.name, column.cast(raw).to_pylist(),
                                id_column)
    return bad


def _undecodable(table, path: Path, start: int, column: str, values: list,
                 id_column: str | None) -> list[str]:
    """Where each of a column's raw ``values`` that is not UTF-8 is, for :func:`_utf8_frame`."""
    ids = None
    found = []
    for row, value in enumerate(values):
        if value is None:
            continue
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as exc:
            if ids is None:
                ids = _readable_ids(table, id_column)
            where = row_label(path, start + row)
            if ids[row] is not None and column != id_column:
                where += f" ({id_column} {shown(ids[row])})"
            found.append(f"{where}, column {column!r}: {_short_bytes(value)} (byte "
                         f"0x{value[exc.start]:02x} at offset {exc.start})")
    return found


def _readable_ids(table, id_column: str | None) -> list[str | None]:
    """The id column's values as text (``None`` where a row has none, or none readable)."""
    import pyarrow as pa

    # the column as written: read_table strips spaces around names (:func:`_stripped_names`)
    written = next((name for name in table.schema.names
                    if id_column is not None and name.strip() == id_column), None)
    if written is None:
        return [None] * table.num_rows
    values = table.column(written)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        values = values.cast(pa.large_binary())  # no UTF-8 check: a bad id is just not shown
    return [_text_or_none(value) for value in values.to_pylist()]


def _text_or_none(value) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None if value is None else str(value)


def _short_bytes(value: bytes, limit: int = 16) -> str:
    """A raw value for an error: its first ``limit`` bytes."""
    return repr(value[:limit]) + ("..." if len(value) > limit else "")


def find_items_table(root: Path, items_file: str | None) -> Path:
    """The items table: the configured file, else the single items.{csv,jsonl,parquet}."""
    if items_file:
        return root / items_file
    return find_table(root, "items", "set data.items_file")


def find_table(root: Path, stem: str, several_fix: str = "keep one, remove the others",
               required: bool = True) -> Path | None:
    """The folder's single ``<stem>.csv|.jsonl|.parquet``: every table is read by
    :func:`read_table`, so each may be in any format it reads (interactions exported to
    Parquet need no conversion). Not ``required`` (users): ``None`` when there is none."""
    names = [f"{stem}{suffix}" for suffix in TABLE_SUFFIXES]
    found = [root / name for name in names if (root / name).is_file()]
    if len(found) > 1:
        raise DataError(f"several {stem} tables in {root} "
                        f"({', '.join(p.name for p in found)}): {several_fix}")
    if found:
        return found[0]
    others = sorted(p.name for p in root.glob(f"{stem}.*") if p.is_file())
    unread = (f"; found {', '.join(others)}, which is not one of these formats (convert it "
              "to CSV, JSONL or Parquet)" if others else "")
    if required:
        raise DataError(f"no {stem} table in {root}: expected one of {', '.join(names)}{unread}")
    if others:
        logger.warning("%s: %s ignored: a %s table is read from %s", root, ", ".join(others),
                       stem, " or ".join(names))
    return None


def require_columns(frame: pd.DataFrame, path: Path, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        found = [str(c) for c in frame.columns]
        hint = delimiter_hint(found[0]) if path.suffix == ".csv" and len(found) == 1 else ""
        # a name with spaces around it or invisible characters (a zero-width space, a byte
        # order mark) would look like the one asked for: show every name quoted and escaped
        listed = map(repr, found) if any(map(_hidden_characters, found)) else found
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; "
                        f"found columns: {', '.join(listed)}{hint}")


def _hidden_characters(name: str) -> bool:
    """Whether a column name has whitespace around it or a character that does not print."""
    return name != name.strip() or not name.isprintable()


def delimiter_hint(header: str) -> str:
    """For a CSV header read as one column: if it holds another delimiter, say so (the
    columns are all there, only glued together); else ""."""
    for delimiter, name in DELIMITERS.items():
        if delimiter in header:
            return (f" — the file seems to be {name}-separated ({delimiter!r}); tfmmrec reads "
                    "comma-separated CSV: save it with commas (or as .jsonl/.parquet)")
    return ""


def require_no_missing_ids(frame: pd.DataFrame, path: Path, column: str) -> None:
    empty = frame.index[frame[column].isna() | (frame[column] == "")]
    if len(empty):
        where = ", ".join(row_label(path, i) for i in empty[:SHOW_AT_MOST])
        raise DataError(f"{path}: empty {column} in {len(empty)} row(s): {where}")


def require_unique(frame: pd.DataFrame, path: Path, column: str) -> None:
    repeat = first_repeat(frame, [column])
    if repeat is not None:
        first, original, count = repeat
        raise DataError(
            f"{path}: duplicate {column} {shown(frame.at[first, column])} at "
            f"{row_label(path, first)} "
            f"(first seen at {row_label(path, original)}); {count} duplicate row(s) in "
            "all. Each id must appear once."
        )


def first_repeat(frame: pd.DataFrame, columns: Sequence[str]) -> tuple[int, int, int] | None:
    """``(row, row it repeats, repeated rows in all)`` for the first row whose ``columns``
    values an earlier row already holds, or None when every row is unique."""
    repeated = frame.duplicated(list(columns), keep="first").to_numpy()
    if not repeated.any():
        return None
    first = frame.index[repeated][0]
    return first, rows_like(frame, first, columns)[0], int(repeated.sum())


def rows_like(frame: pd.DataFrame, row: int, columns: Sequence[str]) -> pd.Index:
    """Every row holding ``row``'s values in ``columns``, in file order."""
    same = (frame[list(columns)] == frame.loc[row, list(columns)]).all(axis=1)
    return frame.index[same.to_numpy()]


def one_row_per_pair(frame: pd.DataFrame, path: Path, policy: str,
                     split_column: str | None = None) -> pd.DataFrame:
    """``frame`` with each (user_id, item_id) pair on one row, before any split sees it.

    A repeated pair would count twice in histories and baselines, and a random split could put
    one copy in train and another in test. ``policy`` is ``data.duplicate_interactions``:
    ``error`` names the first repeat (and, with ``split_column``, a pair in two split parts);
    ``first``/``last`` keep the earliest/latest row of each pair by ``timestamp`` when the
    column is there (already checked numeric), else by file order. Kept rows stay in file order.
    """
    repeat = first_repeat(frame, PAIR_COLUMNS)
    if repeat is None:
        return frame
    if policy == "error":
        raise DataError(_duplicate_pairs_message(frame, path, repeat, split_column))
    count = repeat[2]
    by_time = "timestamp" in frame.columns
    order = frame["timestamp"].sort_values(kind="stable").index if by_time else frame.index
    pairs = frame.loc[order, list(PAIR_COLUMNS)]
    kept = frame.loc[np.sort(pairs.index[~pairs.duplicated(keep=policy)])]
    logger.info("%s: %d repeated (user_id, item_id) row(s) dropped, keeping each pair's %s "
                "row %s (data.duplicate_interactions: %s)", path, count, policy,
                "by timestamp" if by_time else "in file order", policy)
    return kept


def _duplicate_pairs_message(frame: pd.DataFrame, path: Path, repeat: tuple[int, int, int],
                             split_column: str | None) -> str:
    """The first repeated pair with both lines, the leakage case of a given split, the fix."""
    first, original, count = repeat
    message = (f"{path}: duplicate interaction {_pair_text(frame, first)} at "
               f"{row_label(path, first)} (first seen at {row_label(path, original)}); {count} "
               "duplicate row(s) in all")
    if split_column is not None:
        message += _split_leak(frame, path, split_column)
    return (message + ". Each (user_id, item_id) pair must appear once (a split could put one "
            "copy in train and another in test): remove the repeats, or set "
            "data.duplicate_interactions: first|last to keep one row per pair (by timestamp, "
            "else file order).")


def _split_leak(frame: pd.DataFrame, path: Path, split_column: str) -> str:
    """``"; (user_id .., item_id ..) is in both train (line N) and test (line M) ..."``, for
    the first pair in two parts of the given split, or "" when every pair stays in one part."""
    involved = frame[frame.duplicated(list(PAIR_COLUMNS), keep=False)]
    parts = involved.groupby(list(PAIR_COLUMNS), sort=False)[split_column].transform("nunique")
    if not (parts > 1).any():
        return ""
    rows = rows_like(frame, involved.index[(parts > 1).to_numpy()][0], PAIR_COLUMNS)
    values = frame.loc[rows, split_column]
    other = rows[(values != values.iloc[0]).to_numpy()][0]
    return (f"; {_pair_text(frame, rows[0])} is in both {values.iloc[0]} "
            f"({row_label(path, rows[0])}) and {frame.at[other, split_column]} "
            f"({row_label(path, other)}) of the given split (leakage)")


def _pair_text(frame: pd.DataFrame, row: int) -> str:
    return (f"(user_id {shown(frame.at[row, 'user_id'])}, "
            f"item_id {shown(frame.at[row, 'item_id'])})")


def require_numeric(frame: pd.DataFrame, path: Path, column: str,
                    magnitude_limit: float = math.inf) -> pd.Series:
    """Coerce a column to numbers, naming the first value that is not one, is infinite, or
    exceeds ``magnitude_limit`` in absolute value (ratings: float32's largest, since training
    reads them as float32 and an overflow would turn every loss into NaN)."""
    # pandas guesses booleans from a CSV's True/False text (JSONL and Parquet booleans are
    # typed by their writer, and read as 1/0)
    if path.suffix == ".csv" and pd.api.types.is_bool_dtype(frame[column]):
        raise DataError(f"{path}: {column} must be numeric, got {frame[column].iloc[0]} at "
                        f"{row_label(path, frame.index[0])} (a column of True/False, which "
                        "would be read as 1/0)")
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = frame.index[values.isna() & frame[column].notna()]
    if len(bad):
        i = bad[0]
        raise DataError(
            f"{path}: {column} must be numeric, got {shown(frame[column].iloc[i])} at "
            f"{row_label(path, i)} ({len(bad)} bad value(s))"
        )
    if values.isna().any():
        i = frame.index[values.isna()][0]
        raise DataError(f"{path}: empty {column} at {row_label(path, i)}")
    numbers = values.to_numpy(dtype=np.float64)
    out_of_range = ~np.isfinite(numbers) | (np.abs(numbers) > magnitude_limit)
    if out_of_range.any():
        i = frame.index[out_of_range][0]
        limit = ("finite" if math.isinf(magnitude_limit)
                 else f"finite and within ±{magnitude_limit:.4g}")
        value = frame[column].iloc[i]  # a string, or a number pandas already parsed
        text = shown(value) if isinstance(value, str) else str(value)
        raise DataError(
            f"{path}: {column} must be {limit}, got {text} at "
            f"{row_label(path, i)} ({int(out_of_range.sum())} bad value(s))"
        )
    return values


def require_finite_features(frame: pd.DataFrame, path: Path, columns: Sequence[str],
                            id_column: str) -> None:
    """Numeric feature columns hold finite numbers or nothing (an empty cell is a missing
    value). One ``inf`` (``1e400`` in a CSV reads as one) would make the column's mean and
    spread infinite, and standardising would turn every user's value into the same number."""
    for column in columns:
        values = frame[column]
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            continue
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(np.isinf(numbers))  # NaN is an empty cell: a missing value
        if len(bad):
            i = bad[0]
            raise DataError(
                f"{path}: {row_label(path, frame.index[i])} ({id_column} "
                f"{shown(frame[id_column].iloc[i])}), column {column}: {numbers[i]} is not a "
                f"finite number ({len(bad)} such "
                "value(s) in the column); write a finite number (values beyond ±1.8e308 read "
                "as inf) or leave the cell empty"
            )


def require_timestamps(frame: pd.DataFrame, path: Path, column: str) -> pd.Series:
    """A timestamp column as numbers: numeric values as they are (any unit; only their order
    is used), or ISO 8601 dates/times in every row (``2020-01-01``,
    ``2020-01-01T12:00:00+02:00``) as Unix seconds (UTC; no zone: UTC). A column mixing the
    two, or holding anything else, is named with its first value not of the column's kind
    (the kind most of its values have)."""
    numbers = int(pd.to_numeric(frame[column], errors="coerce").notna().sum())
    if numbers == frame[column].notna().sum():
        return _numeric_timestamps(frame, path, column)
    dates = pd.to_datetime(frame[column], format="ISO8601", utc=True, errors="coerce")
    if numbers >= dates.notna().sum():  # mostly numbers: the numeric error names the odd row
        return _numeric_timestamps(frame, path, column)
    bad = frame.index[dates.isna()]
    if len(bad):
        i = bad[0]
        raise DataError(f"{path}: {column} holds ISO 8601 dates, but {row_label(path, i)} has "
                        f"{shown(frame[column].iloc[i])} ({len(bad)} bad value(s)); every row "
                        "needs one (or every row a number)")
    return (dates - pd.Timestamp(0, tz="UTC")).dt.total_seconds()


def _numeric_timestamps(frame: pd.DataFrame, path: Path, column: str) -> pd.Series:
    try:
        return require_numeric(frame, path, column)
    except DataError as exc:
        raise DataError(f"{exc} (timestamps are numbers, e.g. Unix seconds, or ISO 8601 dates "
                        "such as 2020-01-01T12:00:00 in every row)") from None


def require_choice(frame: pd.DataFrame, path: Path, column: str,
                   choices: Sequence[str]) -> pd.Series:
    """The column's values stripped and lower-cased, each one of ``choices`` (else the first bad
    value and its line are named)."""
    values = frame[column].astype("string").str.strip().str.lower()
    bad = frame.index[values.isna() | ~values.isin(list(choices))]
    if len(bad):
        i = bad[0]
        raise DataError(
            f"{path}: {column} must be one of {', '.join(choices)}, got "
            f"{shown(frame[column].iloc[i])} "
            f"at {row_label(path, i)} ({len(bad)} bad value(s))"
        )
    return values.astype(object)


def require_known_items(interactions: pd.DataFrame, path: Path, known: pd.Index,
                        items_path: Path) -> None:
    unknown = interactions.index[~interactions["item_id"].isin(known)]
    if len(unknown):
        where = ", ".join(
            f"{row_label(path, i)} ({shown(interactions['item_id'].iloc[i])})"
            for i in unknown[:SHOW_AT_MOST]
        )
        raise DataError(
            f"{path}: {len(unknown)} interaction(s) name items that are not in "
            f"{items_path.name}: {where}. Add the items or drop those rows"
            f"{_normalisation_hint(interactions, path, unknown[:SHOW_AT_MOST], known, items_path)}"
            f"{_id_format_hint(interactions, path, unknown, known, items_path)}."
        )


NORMAL_FORMS = ("NFC", "NFD", "NFKC", "NFKD")


def _normalisation_hint(interactions: pd.DataFrame, path: Path, shown_rows: pd.Index,
                        known: pd.Index, items_path: Path) -> str:
    """When an unknown id is a known one written in another Unicode normalisation form ('café'
    as 'e' + combining accent in one table, as 'é' in the other), say so with both ids
    escaped: they print the same. Ids are compared as written, never normalised. Only the
    few ``shown_rows`` are looked at, each by its NFC and NFD forms (no pass over ``known``)."""
    import unicodedata

    for i in shown_rows:
        given = interactions["item_id"].iloc[i]
        if not isinstance(given, str) or given.isascii():
            continue
        for form in ("NFC", "NFD"):
            match = unicodedata.normalize(form, given)
            if match != given and match in known:
                return (f"; {row_label(path, i)}'s {cut(ascii(given), 80)} ({_form(given)}) "
                        f"differs from {items_path.name}'s {cut(ascii(match), 80)} ({form}) only "
                        "in Unicode normalisation: write both in one form (e.g. NFC)")
    return ""


def _form(text: str) -> str:
    """The Unicode normalisation form ``text`` is in, for a message."""
    import unicodedata

    return next((form for form in NORMAL_FORMS if unicodedata.is_normalized(form, text)),
                "no normalisation form")


def _id_format_hint(interactions: pd.DataFrame, path: Path, unknown: pd.Index, known: pd.Index,
                    items_path: Path) -> str:
    """When an unknown id names a known item but for its number format ('001' and 1, '7.0'
    and '7'), say so with that pair: ids are compared as text, and a numeric id column
    (Parquet, JSONL, a spreadsheet export) drops leading zeros."""
    catalogue = {}
    for item in known:
        catalogue.setdefault(_as_number_text(item), item)
    for i in unknown[:10_000]:  # an error path: a look at the first rows is enough
        given = interactions["item_id"].iloc[i]
        match = catalogue.get(_as_number_text(given))
        if match is not None:
            return (f"; ids are compared as text, and {row_label(path, i)} has {shown(given)} "
                    "where "
                    f"{items_path.name} has {shown(match)}: write the ids the same way in both "
                    "tables (a numeric id column drops leading zeros; store ids as strings)")
    return ""


def _as_number_text(value) -> str:
    """An id as the integer it spells ('001', '1.0', 1 → '1'); any other id as it is."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if math.isfinite(number) and number.is_integer() else text


# True while a caller refuses missing media itself (:func:`missing_media_refused`).
_MISSING_MEDIA_REFUSED: ContextVar[bool] = ContextVar("missing_media_refused", default=False)


def report_missing_media(modality: str, missing: Sequence[str]) -> None:
    """Missing/corrupt media is normal: the item keeps its other modalities, but say so."""
    if not _MISSING_MEDIA_REFUSED.get():
        _report_media(modality, missing, "missing, unreadable or undecodable", ", ",
                      " and")


@contextlib.contextmanager
def missing_media_refused() -> Iterator[None]:
    """Within: :func:`report_missing_media` stays quiet, for a caller whose own error names
    each missing file (``catalog add``), so one missing file is not a warning, then an error."""
    token = _MISSING_MEDIA_REFUSED.set(True)
    try:
        yield
    finally:
        _MISSING_MEDIA_REFUSED.reset(token)


def require_resolved_media(frame: pd.DataFrame, table: Path, root: Path, column: str,
                           modality: str, paths: Sequence[Path | None],
                           refuse_all: bool = True) -> None:
    """Check a media column's resolved ``paths`` (``None``: no file) against its cells.

    Some files missing is normal (a warning naming them and the folder they were looked for
    in); every non-empty cell missing is not a catalogue with gaps but paths written relative
    to another folder, or a column that holds no paths: a ``DataError`` (``refuse_all``),
    rather than a model silently trained without the modality. Empty cells are items without
    that medium. Quiet within :func:`missing_media_refused` (its caller names each file)."""
    if _MISSING_MEDIA_REFUSED.get():
        return
    cells = frame[column].fillna("").astype(str).str.strip()
    missing = (cells != "").to_numpy() & np.array([p is None for p in paths], dtype=bool)
    if not missing.any():
        return
    rows = frame.index[missing]
    if refuse_all and missing.sum() == (cells != "").sum():
        raise DataError(unresolved_media(table, root, column, modality, rows[0],
                                         cells[rows[0]], int(missing.sum())))
    entries = [f"{cells[row]} ({row_label(table, row)})" for row in rows]
    _report_media(modality, entries,
                  f"missing (paths are resolved against {root.absolute()})", ", ",
                  " and")


def is_file(path: Path) -> bool:
    """``path.is_file()``, False for a path the OS refuses to look up (a name part over 255
    bytes: ``OSError`` "File name too long" instead of a missing file)."""
    try:
        return path.is_file()
    except OSError:
        return False


def unresolved_media(table: Path, root: Path, column: str, modality: str, row: int,
                     value: str, count: int) -> str:
    """The error of a media column none of whose paths is a file: the folder, one path as
    resolved, and what to change."""
    root = root.absolute()
    resolved = Path(value) if Path(value).is_absolute() else root / value
    elsewhere = ""
    if not Path(value).is_absolute() and is_file(Path(value)):
        elsewhere = (f" ({shown(value)} exists relative to the working directory "
                     f"{Path.cwd()}: write it relative to {root})")
    return (f"{table}: none of the {count} {modality} path(s) in column {column!r} is a "
            f"file: {row_label(table, row)} has {shown(value)}, resolved to "
            f"{resolved}{elsewhere}. "
            f"Media paths are relative to the folder holding {table.name} ({root}); fix "
            f"them, or set data.{modality}_column to the column that holds {modality} paths "
            "(an empty cell is an item without one)")


def _report_media(modality: str, entries: Sequence[str], what: str, separator: str,
                  more_prefix: str) -> None:
    """One warning: how many ``modality`` files are ``what``, and the first few."""
    if entries:
        shown = separator.join(entries[:SHOW_AT_MOST])
        more = (f"{more_prefix} {len(entries) - SHOW_AT_MOST} more"
                if len(entries) > SHOW_AT_MOST else "")
        logger.warning("%d %s file(s) %s, those items are encoded without %s: %s%s",
                       len(entries), modality, what, modality, shown, more)


def check_media(catalog, table: Path, settings: Mapping[str, Any] | None = None,
                limits: ServingLimitsConfig | None = None) -> dict[str, list[str]]:
    """Check every media file ``catalog`` (read from ``table``) references, without a full
    decode.

    ``tfmmrec validate``'s media check: each file modality's ``check_file`` (image: format and
    pixel limit from the header, then a JPEG's data at 1/8 scale or Pillow's ``verify``;
    audio: the header, sample-rate limit) looks at every present file. Returns ``{modality:
    ["<row>: <reason>", ...]}`` for the files the decoders would refuse, and warns as for
    missing files (those items are encoded without that modality). ``settings``: the
    preprocessing settings (``modalities.settings_from_config(config)``, which carry
    ``export.limits``; default: the defaults). ``limits``: ``export.limits`` itself (a
    ``ServingLimitsConfig``; default: the defaults), for what only the served model refuses:
    audio clips below its ``min_sample_rate`` are encoded, but warned about
    (:func:`warn_low_sample_rates`).
    """
    from tfmmrec import modalities
    from tfmmrec.modalities.audio import AudioModality

    settings = modalities.resolve_settings(dict(settings or {}))
    found: dict[str, list[str]] = {}
    for spec in modalities.specs():
        if not isinstance(spec, modalities.FileModality) or spec.name not in catalog.modalities:
            continue
        problems, checked = [], []
        for row, value in zip(catalog.frame.index, catalog.values(spec.name), strict=True):
            if value is None:
                continue
            try:
                spec.check_file(value, settings)
                checked.append((row, value))
            except MediaDecodeError as exc:
                problems.append(f"{row_label(table, row)}: {exc}")
        report_bad_media(spec.name, problems)
        if isinstance(spec, AudioModality):
            warn_low_sample_rates(checked, table, limits)
        if problems:
            found[spec.name] = problems
    return found


def warn_low_sample_rates(clips: Sequence[tuple[int, Path]], table: Path,
                          limits: ServingLimitsConfig | None = None) -> list[str]:
    """One warning naming the catalogue clips (``(row, path)``, each already checked) whose
    sample rate is below ``export.limits.min_sample_rate`` (``limits``, a
    ``ServingLimitsConfig``; default: the defaults). Not an error: catalogue clips are encoded
    offline, resampled like any other; only the served model refuses a *query* clip at such a
    rate, and a catalogue of them usually means its queries will be too. Returns the entries."""
    import soundfile

    from tfmmrec.config import ServingLimitsConfig

    low_limit = (limits or ServingLimitsConfig()).min_sample_rate
    low = []
    for row, path in clips:
        rate = int(soundfile.info(str(path)).samplerate)  # the header only, as check_file
        if rate < low_limit:
            low.append(f"{path} ({row_label(table, row)}: {rate} Hz)")
    if low:
        more = f" and {len(low) - SHOW_AT_MOST} more" if len(low) > SHOW_AT_MOST else ""
        logger.warning("%d audio file(s) below export.limits.min_sample_rate=%d Hz: encoded "
                       "for the catalogue, but the served model refuses a query clip at that "
                       "rate: %s%s", len(low), low_limit, ", ".join(low[:SHOW_AT_MOST]), more)
    return low


def report_bad_media(modality: str, problems: Sequence[str]) -> None:
    """Present files that would not decode, as :func:`report_missing_media` words it."""
    _report_media(modality, problems, "undecodable or over the limits", "; ", ";")
