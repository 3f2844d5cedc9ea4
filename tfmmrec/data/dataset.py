"""Data layer: a dataset folder → ``Dataset`` (catalog with modality columns, interactions, users).

A dataset is a folder holding an items table (``items.csv|.jsonl|.parquet``: ``item_id``, text
columns, image/audio columns with paths relative to the folder), an interactions table
(``interactions.csv|.jsonl|.parquet``: ``user_id``, ``item_id``, optional ``rating``,
``timestamp``, ``split``) and optionally a users table (``users.csv|.jsonl|.parquet``). A
user-supplied test set and candidate list are read here too.
"""

from __future__ import annotations

import dataclasses
import decimal
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tfmmrec import modalities
from tfmmrec.config import Config, DataConfig
from tfmmrec.data import validate
from tfmmrec.data.splits import SPLIT_COLUMN, SPLIT_VALUES
from tfmmrec.errors import DataError, shown
from tfmmrec.modalities.base import FileModality, ModalitySpec

# Ratings are read as float32 in training: a larger one overflows to inf and every loss to NaN.
RATING_LIMIT = float(np.finfo(np.float32).max)

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class ModalityColumns:
    """Which items-table columns feed which modality (empty/None: modality absent).

    ``text``, ``image`` and ``audio`` name the built-in modalities' columns; ``extra`` holds
    ``(modality, columns)`` pairs of modalities registered later. :meth:`of` reads any of them.
    """

    text: tuple[str, ...] = ()
    image: str | None = None
    audio: str | None = None
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def from_mapping(cls, columns: Mapping[str, tuple[str, ...]]) -> ModalityColumns:
        """``{modality: columns}`` → the dataclass (built-in fields keep their own shapes)."""
        builtin = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values: dict[str, Any] = {}
        for name, found in columns.items():
            if name in builtin:
                several = isinstance(cls.__dataclass_fields__[name].default, tuple)
                values[name] = tuple(found) if several else (found[0] if found else None)
        extra = tuple((name, tuple(found)) for name, found in columns.items()
                      if name not in builtin and found)
        return cls(**values, extra=extra)

    def of(self, modality: str) -> tuple[str, ...]:
        """The columns of ``modality`` (empty when the table has none)."""
        if modality != "extra" and modality in self.__dataclass_fields__:
            value = getattr(self, modality)
        else:
            value = dict(self.extra).get(modality, ())
        if not value:
            return ()
        return (value,) if isinstance(value, str) else tuple(value)

    def present(self) -> tuple[str, ...]:
        return tuple(name for name in modalities.names() if self.of(name))


@dataclass
class Catalog:
    """The items, in a fixed order: item *index* i everywhere in tfmmrec means row i here.

    Each modality's per-item content (text, or a media path / ``None``) sits in the field its
    spec names (``ModalitySpec.catalog_field``) or, for a modality registered later, in
    ``extra``; :meth:`values` reads either.
    """

    item_ids: np.ndarray
    texts: np.ndarray
    image_paths: list[Path | None]
    audio_paths: list[Path | None]
    columns: ModalityColumns
    frame: pd.DataFrame = field(repr=False)
    extra: dict[str, Sequence] = field(default_factory=dict, repr=False)

    @classmethod
    def from_values(cls, item_ids: np.ndarray, values: Mapping[str, Sequence],
                    columns: ModalityColumns, frame: pd.DataFrame) -> Catalog:
        """A catalogue from ``{modality: per-item content}`` for every registered modality."""
        fields = {}
        extra = {}
        for spec in modalities.specs():
            if spec.catalog_field:
                fields[spec.catalog_field] = values[spec.name]
            else:
                extra[spec.name] = values[spec.name]
        return cls(item_ids=item_ids, columns=columns, frame=frame, extra=extra, **fields)

    def __len__(self) -> int:
        return len(self.item_ids)

    def __repr__(self) -> str:  # the dataclass's printed every item's text and path
        return f"Catalog({len(self)} items, modalities={list(self.modalities)})"

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.columns.present()

    def values(self, modality: str) -> Sequence:
        """Per-item content of ``modality`` (text, or a resolved media path / ``None``)."""
        spec = modalities.get(modality)
        if spec.catalog_field:
            return getattr(self, spec.catalog_field)
        return self.extra.get(modality, [None] * len(self))

    def presence(self, modality: str) -> np.ndarray:
        """Boolean [N]: whether the item has content for ``modality`` (it may still be corrupt)."""
        spec = modalities.get(modality)
        return np.array([spec.present(v) for v in self.values(modality)], dtype=bool)

    def index_of(self, item_ids) -> np.ndarray:
        lookup = pd.Index(self.item_ids)
        positions = lookup.get_indexer(pd.Index(item_ids))
        if (positions < 0).any():
            unknown = [str(i) for i in np.asarray(item_ids)[positions < 0][:5]]
            raise DataError(f"unknown item id(s) {unknown}: not in the catalog")
        return positions.astype(np.int64)


@dataclass
class Dataset:
    """A validated dataset folder. ``interactions`` carries an ``item_index`` column."""

    root: Path
    catalog: Catalog
    interactions: pd.DataFrame
    users: pd.DataFrame | None
    user_feature_columns: tuple[str, ...] = ()
    items_path: Path | None = None  # the items table read (csv, jsonl or parquet)

    @property
    def num_items(self) -> int:
        return len(self.catalog)

    def __repr__(self) -> str:
        """A line, as ``Workspace``'s and ``TrainResult``'s: the dataclass's printed every
        array (105 KB for ML-100K)."""
        users = "" if self.users is None else f", users table {len(self.users)} rows"
        return (f"Dataset(root={str(self.root)!r}, {self.num_items} items, "
                f"modalities={list(self.catalog.modalities)}, {len(self.interactions)} "
                f"interactions, {len(self.user_ids)} users{users})")

    @property
    def user_ids(self) -> np.ndarray:
        """All user ids, sorted: the query tower's vocabulary order."""
        ids = set(self.interactions["user_id"].unique())
        if self.users is not None:
            ids |= set(self.users["user_id"])
        return np.array(sorted(ids), dtype=object)


def load_dataset(config: Config | DataConfig | str | Path) -> Dataset:
    """Read and validate a dataset folder (``config.path``, or ``config.data.path`` of a whole
    ``Config``, or the folder itself), raising ``DataError`` on bad input."""
    if isinstance(getattr(config, "data", None), DataConfig):  # a whole Config
        config = config.data
    if not isinstance(config, DataConfig):
        if not isinstance(config, str | os.PathLike):
            raise TypeError(f"load_dataset takes a Config, a DataConfig or a folder path, "
                            f"got {type(config).__name__}")
        config = DataConfig(path=os.fspath(config))
    if not config.path:
        raise DataError("data.path is empty: point it at a dataset folder (or run `tfmmrec demo`)")
    root = Path(config.path).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    items_path = validate.find_items_table(root, config.items_file)
    catalog = _load_catalog(root, items_path, config)
    interactions = _load_interactions(root, catalog, config, items_path)
    users, feature_columns = _load_users(root, config)
    if users is not None:
        _warn_if_no_user_matches(users, interactions, root)
    logger.info("loaded %s: %d items (%s), %d interactions, %d users", root, len(catalog),
                ", ".join(catalog.modalities) or "no content", len(interactions),
                interactions["user_id"].nunique())
    return Dataset(root, catalog, interactions, users, feature_columns, items_path)


def _load_catalog(root: Path, path: Path, config: DataConfig) -> Catalog:
    frame = validate.read_table(path, id_columns=["item_id"], all_strings=True)
    validate.require_columns(frame, path, ["item_id"])
    validate.require_no_missing_ids(frame, path, "item_id")
    validate.require_unique(frame, path, "item_id")
    columns = infer_modality_columns(frame, config)
    configured = [c for name in modalities.names() for c in columns.of(name)]
    validate.require_columns(frame, path, [c for c in configured if c])
    values = catalog_values(frame, root, {name: columns.of(name) for name in modalities.names()},
                            path)
    columns = _without_empty_media(columns, values, path)
    return Catalog.from_values(frame["item_id"].to_numpy(dtype=object), values, columns, frame)


def _without_empty_media(columns: ModalityColumns, values: Mapping[str, Sequence],
                         path: Path) -> ModalityColumns:
    """A media column with no value in any row names no modality of this catalogue: it was
    trained as one (a projection that never saw a file) and exported with a ``query_image``
    that answered confidently from it. Said, and left out."""
    kept = {name: columns.of(name) for name in modalities.names()}
    for spec in modalities.specs():
        if (isinstance(spec, FileModality) and kept[spec.name]
                and not any(spec.present(v) for v in values[spec.name])):
            logger.warning("%s: the %s column %s has no value in any row: %s is not a modality "
                           "of this catalogue", path, spec.name,
                           ", ".join(map(repr, kept[spec.name])), spec.name)
            kept[spec.name] = ()
    return ModalityColumns.from_mapping(kept)


def catalog_values(frame: pd.DataFrame, root: Path, columns: Mapping[str, tuple[str, ...]],
                   table: Path, refuse_unresolved: bool = True) -> dict[str, Sequence]:
    """Each modality's per-item content (``ModalitySpec.catalog_values``), its media paths
    checked here (``validate.require_resolved_media``): the missing ones are named with the
    folder they were looked for in, and a column none of whose paths is a file is an error
    (``refuse_unresolved``; a stream judges that on the whole table and passes False)."""
    values: dict[str, Sequence] = {}
    for spec in modalities.specs():
        chosen = columns.get(spec.name, ())
        if not (isinstance(spec, modalities.FileModality) and chosen):
            values[spec.name] = spec.catalog_values(frame, root, chosen, table)
            continue
        with validate.missing_media_refused():  # reported below, naming the folder
            values[spec.name] = spec.catalog_values(frame, root, chosen, table)
        validate.require_resolved_media(frame, table, root, chosen[0], spec.name,
                                        values[spec.name], refuse_unresolved)
    return values


def infer_modality_columns(frame: pd.DataFrame, config: DataConfig) -> ModalityColumns:
    """Use configured columns; infer the rest from names and file extensions of the values.

    Each registered modality infers its own columns (``ModalitySpec.infer_columns``) among the
    columns no other modality took; text (``claims_rest``) goes last and takes what is left.
    """
    return choose_modality_columns([c for c in frame.columns if c != "item_id"], config,
                                   lambda spec, candidates: spec.infer_columns(frame, candidates))


def choose_modality_columns(columns: Sequence[str], config: DataConfig,
                            infer: Callable[[ModalitySpec, list[str]], Sequence[str]]
                            ) -> ModalityColumns:
    """:func:`infer_modality_columns` with ``infer(spec, candidates)`` judging the table (a
    frame, or a stream's counts of the whole table)."""
    found: dict[str, tuple[str, ...]] = {}
    for spec in sorted(modalities.specs(), key=lambda s: s.claims_rest):
        chosen = spec.configured_columns(config)
        if chosen is None:
            taken = {c for chosen in found.values() for c in chosen}
            chosen = infer(spec, [c for c in columns if c not in taken])
        found[spec.name] = tuple(c for c in chosen if c)
    return ModalityColumns.from_mapping({name: found[name] for name in modalities.names()})


def _load_interactions(root: Path, catalog: Catalog, config: DataConfig,
                       items_path: Path) -> pd.DataFrame:
    path = validate.find_table(root, "interactions")
    frame = validate.read_table(path, id_columns=["user_id", "item_id"])
    validate.require_columns(frame, path, ["user_id", "item_id"])
    validate.require_no_missing_ids(frame, path, "user_id")
    validate.require_no_missing_ids(frame, path, "item_id")
    known = pd.Index(catalog.item_ids)
    validate.require_known_items(frame, path, known, items_path)
    if "timestamp" in frame.columns and frame["timestamp"].isna().all():
        # Optional and left blank: the same as no column (a temporal split then says so).
        logger.info("%s: the timestamp column is empty in every row; treated as absent", path)
        frame = frame.drop(columns="timestamp")
    if "rating" in frame.columns:
        frame["rating"] = validate.require_numeric(frame, path, "rating", RATING_LIMIT)
    if "timestamp" in frame.columns:
        frame["timestamp"] = validate.require_timestamps(frame, path, "timestamp")
    if SPLIT_COLUMN in frame.columns:
        frame[SPLIT_COLUMN] = _split_values(frame, path)
        if config.split != "given":
            logger.warning("%s has a %s column, ignored because data.split=%s; set data.split: "
                           "given to use it", path, SPLIT_COLUMN, config.split)
    elif config.split == "given":
        raise DataError(f"{path}: data.split is 'given' but there is no {SPLIT_COLUMN} column; "
                        f"add one holding {', '.join(SPLIT_VALUES)} per row")
    # Before the rating filter and every split: the kept row is the pair's, whatever its rating.
    frame = validate.one_row_per_pair(frame, path, config.duplicate_interactions,
                                      SPLIT_COLUMN if config.split == "given" else None)
    if config.min_rating is not None:
        if "rating" not in frame.columns:
            raise DataError(f"data.min_rating is set but {path} has no rating column")
        frame = frame[frame["rating"] >= config.min_rating]
        if frame.empty:
            raise DataError(f"{path}: no interaction has rating >= {config.min_rating}")
    frame = frame.reset_index(drop=True)
    frame["user_id"] = frame["user_id"].astype(object)
    frame["item_id"] = frame["item_id"].astype(object)
    frame["item_index"] = known.get_indexer(frame["item_id"]).astype(np.int64)
    return frame


def load_test_interactions(path: str | Path, dataset: Dataset, duplicates: str = "error",
                           min_rating: float | None = None) -> pd.DataFrame:
    """A user-supplied test set (CSV/JSONL/Parquet with ``user_id``, ``item_id``, optional
    ``rating``), checked against the dataset like interactions.csv, with an ``item_index``
    column. A ``rating`` column is kept (a ranking head's RMSE/MAE and NDCG read it) and
    checked as interactions.csv's is; ``attrs["source"]`` is the file, for later errors.

    Its users must be known to the model (in interactions.csv or users.csv): an unknown user
    has no row to be scored from, so it is named (file, line, value) rather than skipped. A
    repeated pair would count twice in the metrics: ``duplicates`` is
    ``data.duplicate_interactions``, as for interactions.csv. ``min_rating`` is
    ``data.min_rating``: rows rated below it are left out as interactions.csv's are (they are
    not positives), counted in ``attrs["below_min_rating"]``; a file without ratings lists
    positives only and keeps every row.
    """
    path = Path(path).expanduser()
    frame = validate.read_table(path, id_columns=["user_id", "item_id"])
    validate.require_columns(frame, path, ["user_id", "item_id"])
    if SPLIT_COLUMN in frame.columns:  # interactions.csv itself, say: its test rows, below
        frame[SPLIT_COLUMN] = _split_values(frame, path)
    validate.require_no_missing_ids(frame, path, "user_id")
    validate.require_no_missing_ids(frame, path, "item_id")
    known = pd.Index(dataset.catalog.item_ids)
    validate.require_known_items(frame, path, known,
                                 dataset.items_path or dataset.root / "items.csv")
    if "rating" in frame.columns:
        frame["rating"] = validate.require_numeric(frame, path, "rating", RATING_LIMIT)
    if SPLIT_COLUMN in frame.columns:  # before the rows are judged as test rows (labels kept)
        frame = _test_rows(frame, path)
    users = pd.Index(dataset.user_ids.astype(str))
    unknown = frame.index[~frame["user_id"].astype(str).isin(users)]
    if len(unknown):
        where = ", ".join(f"{validate.row_label(path, i)} ({frame['user_id'].loc[i]!r})"
                          for i in unknown[:validate.SHOW_AT_MOST])
        raise DataError(f"{path}: {len(unknown)} row(s) name users the model does not know: "
                        f"{where}. Add them to users.csv (then retrain) or drop those rows.")
    frame = validate.one_row_per_pair(frame, path, duplicates)
    below = 0
    if min_rating is not None and "rating" in frame.columns:
        kept = frame["rating"] >= min_rating
        below = int((~kept).sum())
        if not kept.any():
            raise DataError(f"{path}: no row has rating >= data.min_rating={min_rating:g}")
        frame = frame[kept]
    rating = frame["rating"].to_numpy(np.float64) if "rating" in frame.columns else None
    frame = frame[["user_id", "item_id"]].astype(object).reset_index(drop=True)
    frame["item_index"] = known.get_indexer(frame["item_id"]).astype(np.int64)
    if rating is not None:
        frame["rating"] = rating
    frame.attrs["source"] = path
    frame.attrs["below_min_rating"] = below
    return frame


def _split_values(frame: pd.DataFrame, path: Path) -> pd.Series:
    """The split column, each value one of ``SPLIT_VALUES`` (an empty one named as such)."""
    empty = frame.index[frame[SPLIT_COLUMN].astype("string").str.strip().fillna("") == ""]
    if len(empty):  # else named as "got nan", which reads like a value someone wrote
        raise DataError(f"{path}: {SPLIT_COLUMN} must be one of {', '.join(SPLIT_VALUES)}, "
                        f"got an empty split value at "
                        f"{validate.row_label(path, empty[0])} ({len(empty)} empty)")
    return validate.require_choice(frame, path, SPLIT_COLUMN, SPLIT_VALUES)


def _test_rows(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """A test file's rows whose (checked) split column says test: its validation rows are
    what tuned choices were made on, and were scored as test rows when the column was
    ignored; its train rows the model trained on."""
    split = frame[SPLIT_COLUMN]
    test = (split == "test").to_numpy()
    if not test.any():
        raise DataError(f"{path}: no row's {SPLIT_COLUMN} column says test (of {len(frame)} "
                        "rows): pass a file of test interactions, or drop the column to score "
                        "every row")
    if not test.all():
        counts = split[~test].value_counts()
        logger.warning("%s: scoring its %d row(s) whose %s column says test; %s left out", path,
                       int(test.sum()), SPLIT_COLUMN,
                       ", ".join(f"{counts[v]} {v}" for v in SPLIT_VALUES if v in counts))
    return frame[test]


def read_candidate_ids(path: str | Path) -> list[tuple[int, str]]:
    """``(line number, item id)`` of a text file of item ids, one per line; blank lines and
    lines starting with ``#`` skipped. Cheap, so a command checks the file before encoding."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"candidates file not found: {path}")
    ids = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            item = raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: {validate.not_utf8(number, raw, exc)}") from None
        if item and not item.startswith("#"):
            ids.append((number, item))
    if not ids:
        raise DataError(f"{path}: no item ids (one per line expected)")
    return ids


def load_candidates(path: str | Path, catalog: Catalog) -> np.ndarray:
    """Item indices from a text file of item ids, one per line ("rank only these items").

    Blank lines and lines starting with ``#`` are skipped; an unknown id is named with its line.
    """
    path = Path(path).expanduser()
    lookup = pd.Index(catalog.item_ids.astype(str))
    indices, bad = [], []
    for number, item in read_candidate_ids(path):
        position = lookup.get_indexer([item])[0]
        if position < 0:  # a value cut as every echoed one is (a 600-character id)
            bad.append(f"{path.name} line {number} ({shown(item)})")
        indices.append(position)
    if bad:
        listed = ", ".join(bad[:validate.SHOW_AT_MOST])
        raise DataError(f"{path}: {len(bad)} candidate item(s) not in the catalogue: {listed}")
    return np.unique(np.asarray(indices, np.int64))


def _load_users(root: Path, config: DataConfig) -> tuple[pd.DataFrame | None, tuple[str, ...]]:
    path = validate.find_table(root, "users", required=False)
    if path is None:
        return None, ()
    frame = validate.read_table(path, id_columns=["user_id"])
    validate.require_columns(frame, path, ["user_id"])
    validate.require_no_missing_ids(frame, path, "user_id")
    validate.require_unique(frame, path, "user_id")
    if config.user_feature_columns is None:
        columns = tuple(c for c in frame.columns if c != "user_id")
    else:
        columns = tuple(config.user_feature_columns)
        validate.require_columns(frame, path, columns)
    for column in columns:
        _warn_if_nearly_numeric(frame, path, column)
    validate.require_finite_features(frame, path, columns, "user_id")
    frame["user_id"] = frame["user_id"].astype(object)
    return frame, columns


def _warn_if_no_user_matches(users: pd.DataFrame, interactions: pd.DataFrame,
                             root: Path) -> None:
    """A users table none of whose ids is an interacting user gives no user a feature, which
    training cannot notice: almost always ids written differently (``0`` and ``000``)."""
    known = set(users["user_id"].astype(str))
    seen = interactions["user_id"].astype(str).unique()
    if len(seen) and not any(user in known for user in seen):
        logger.warning("%s: none of the users table's %d user ids is a user of the interactions "
                       "(%s there, %s in the users table), so no user gets its features; ids "
                       "are compared as text: write them the same way in both tables (a "
                       "numeric id column drops leading zeros)", root, len(known),
                       shown(seen[0]), shown(str(users["user_id"].iloc[0])))
        return
    # Some users without a row is a table that lacks them; a row whose id is such a user's
    # written another way (001 and 1.0, " u7" and "U7") is a user silently without features.
    strangers = {_loose_id(user): user for user in known.difference(seen)}
    pairs = [(user, strangers[_loose_id(user)]) for user in seen
             if user not in known and _loose_id(user) in strangers]
    if pairs:
        logger.warning("%s: %d user(s) of the interactions have no row in the users table but "
                       "one written another way (%s there, %s in the users table), so they get "
                       "no features; ids are compared as text: write them the same way in both "
                       "tables", root, len(pairs), shown(pairs[0][0]), shown(pairs[0][1]))


def _loose_id(user_id: str) -> str:
    """``user_id`` as an exact number if it is one (``001``, ``1.0`` → ``1``; decimal, so long
    ids such as 1234567890123456789 and …790 stay apart), else trimmed and lower-cased: what
    tells two spellings of one id apart only in form."""
    text = user_id.strip()
    try:
        number = decimal.Decimal(text)
    except decimal.InvalidOperation:
        return text.lower()
    return str(number.normalize()) if number.is_finite() else text.lower()


def _warn_if_nearly_numeric(frame: pd.DataFrame, path: Path, column: str) -> None:
    """A feature column is numeric (standardised) only if every value is a number; one typo
    (``age`` = ``old``) silently makes the whole column categorical. Say so, naming the rows,
    when nearly every value is a number."""
    values = frame[column]
    if pd.api.types.is_numeric_dtype(values):
        return
    given = values.notna() & (values.astype(str).str.strip() != "")
    numbers = pd.to_numeric(values.where(given), errors="coerce").notna()
    if given.sum() < 2 or numbers.sum() < 0.9 * given.sum():
        return
    bad = [f"{validate.row_label(path, i)} ({values.iloc[i]!r})"
           for i in np.flatnonzero(given & ~numbers)]
    logger.warning("%s: user feature %s is numeric except at %s: the column is embedded as "
                   "categories; fix %s to standardise it as a number", path, column,
                   ", ".join(bad[:validate.SHOW_AT_MOST]), "that value" if len(bad) == 1
                   else "those values")


def load_items_table(path: str | Path, columns: ModalityColumns) -> Catalog:
    """An items table read with a known schema (a catalogue update of an exported model): the
    same checks, text joining and media path resolution as a dataset folder's items table.
    Media paths are relative to the table's folder."""
    path = Path(path)
    frame = validate.read_table(path, id_columns=["item_id"], all_strings=True)
    validate.require_columns(frame, path, ["item_id"])
    validate.require_no_missing_ids(frame, path, "item_id")
    validate.require_unique(frame, path, "item_id")
    values = catalog_values(frame, path.parent, {
        name: tuple(c for c in columns.of(name) if c in frame.columns)
        for name in modalities.names()}, path)
    return Catalog.from_values(frame["item_id"].to_numpy(dtype=object), values, columns, frame)
