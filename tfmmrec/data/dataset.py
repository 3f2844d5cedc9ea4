"""Data layer: a dataset folder → ``Dataset`` (catalog with modality columns, interactions, users).

A dataset is a folder holding an items table (``items.csv|.jsonl|.parquet``: ``item_id``, text
columns, image/audio columns with paths relative to the folder), ``interactions.csv``
(``user_id``, ``item_id``, optional ``rating``, ``timestamp``, ``split``) and optionally
``users.csv``. A user-supplied test set and candidate list are read here too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tfmmrec.config import DataConfig
from tfmmrec.data import validate
from tfmmrec.data.media import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS
from tfmmrec.data.splits import SPLIT_COLUMN, SPLIT_VALUES
from tfmmrec.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_NAMES = {"image", "images", "poster", "cover", "thumbnail", "picture", "photo", "image_path"}
AUDIO_NAMES = {"audio", "clip", "sound", "audio_path", "preview", "wav"}
TEXT_SEPARATOR = ". "


@dataclass(frozen=True)
class ModalityColumns:
    """Which items-table columns feed which modality (empty/None: modality absent)."""

    text: tuple[str, ...] = ()
    image: str | None = None
    audio: str | None = None

    def present(self) -> tuple[str, ...]:
        names = []
        if self.text:
            names.append("text")
        if self.image:
            names.append("image")
        if self.audio:
            names.append("audio")
        return tuple(names)


@dataclass
class Catalog:
    """The items, in a fixed order: item *index* i everywhere in tfmmrec means row i here."""

    item_ids: np.ndarray
    texts: np.ndarray
    image_paths: list[Path | None]
    audio_paths: list[Path | None]
    columns: ModalityColumns
    frame: pd.DataFrame = field(repr=False)

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.columns.present()

    def presence(self, modality: str) -> np.ndarray:
        """Boolean [N]: whether the item has content for ``modality`` (it may still be corrupt)."""
        if modality == "text":
            return np.array([bool(t) for t in self.texts])
        paths = self.image_paths if modality == "image" else self.audio_paths
        return np.array([p is not None for p in paths])

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

    @property
    def num_items(self) -> int:
        return len(self.catalog)

    @property
    def user_ids(self) -> np.ndarray:
        """All user ids, sorted: the query tower's vocabulary order."""
        ids = set(self.interactions["user_id"].unique())
        if self.users is not None:
            ids |= set(self.users["user_id"])
        return np.array(sorted(ids), dtype=object)


def load_dataset(config: DataConfig | str | Path) -> Dataset:
    """Read and validate a dataset folder (``config.path``), raising ``DataError`` on bad input."""
    if not isinstance(config, DataConfig):
        config = DataConfig(path=str(config))
    if not config.path:
        raise DataError("data.path is empty: point it at a dataset folder (or run `tfmmrec demo`)")
    root = Path(config.path).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    catalog = _load_catalog(root, config)
    interactions = _load_interactions(root, catalog, config)
    users, feature_columns = _load_users(root, config)
    logger.info("loaded %s: %d items (%s), %d interactions, %d users", root, len(catalog),
                ", ".join(catalog.modalities) or "no content", len(interactions),
                interactions["user_id"].nunique())
    return Dataset(root, catalog, interactions, users, feature_columns)


def _load_catalog(root: Path, config: DataConfig) -> Catalog:
    path = validate.find_items_table(root, config.items_file)
    frame = validate.read_table(path, id_columns=["item_id"], all_strings=True)
    validate.require_columns(frame, path, ["item_id"])
    validate.require_no_missing_ids(frame, path, "item_id")
    validate.require_unique(frame, path, "item_id")
    columns = infer_modality_columns(frame, config)
    configured = [*columns.text, columns.image, columns.audio]
    validate.require_columns(frame, path, [c for c in configured if c])
    return Catalog(
        item_ids=frame["item_id"].to_numpy(dtype=object),
        texts=_join_text(frame, columns.text),
        image_paths=_media_paths(frame, root, columns.image, "image", path),
        audio_paths=_media_paths(frame, root, columns.audio, "audio", path),
        columns=columns,
        frame=frame,
    )


def infer_modality_columns(frame: pd.DataFrame, config: DataConfig) -> ModalityColumns:
    """Use configured columns; infer the rest from names and file extensions of the values."""
    candidates = [c for c in frame.columns if c != "item_id"]
    image = config.image_column
    if image is None:
        image = _find_media_column(frame, candidates, IMAGE_NAMES, IMAGE_EXTENSIONS)
    audio = config.audio_column
    if audio is None:
        audio = _find_media_column(frame, candidates, AUDIO_NAMES, AUDIO_EXTENSIONS)
    if config.text_columns is not None:
        text = tuple(config.text_columns)
    else:
        text = tuple(
            c for c in candidates
            if c not in (image, audio) and _looks_like_text(frame[c])
        )
    return ModalityColumns(text=text, image=image or None, audio=audio or None)


def _find_media_column(frame: pd.DataFrame, candidates, names: set[str],
                       extensions: tuple[str, ...]) -> str | None:
    for column in candidates:
        if str(column).lower() in names:
            return column
    for column in candidates:
        values = frame[column].dropna().astype(str)
        values = values[values != ""]
        if len(values) and values.str.lower().str.endswith(extensions).mean() > 0.9:
            return column
    return None


def _looks_like_text(series: pd.Series) -> bool:
    if not (pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series)):
        return False
    values = series.dropna().astype(str)
    values = values[values != ""]
    if values.empty:
        return False
    numeric = pd.to_numeric(values, errors="coerce").notna().mean()
    return numeric < 0.5


def _join_text(frame: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
    if not columns:
        return np.full(len(frame), "", dtype=object)
    parts = pd.DataFrame({c: _text_values(frame[c]) for c in columns})
    return np.array(
        [TEXT_SEPARATOR.join(v.strip() for v in row if v.strip()) for row in parts.to_numpy()],
        dtype=object,
    )


def _text_values(series: pd.Series) -> pd.Series:
    """A column as the text a reader would write: missing → "", whole floats without ".0".

    JSONL and Parquet tables arrive typed, and a numeric column with a gap is float: 1995.0
    would reach the text tower as "1995.0" (CSV columns are read as written, see read_table).
    """
    if pd.api.types.is_float_dtype(series):
        return series.map(lambda v: "" if pd.isna(v) else
                          str(int(v)) if float(v).is_integer() else str(v))
    return series.astype(object).where(series.notna(), "").astype(str)


def _media_paths(frame: pd.DataFrame, root: Path, column: str | None,
                 modality: str, table: Path) -> list[Path | None]:
    if not column:
        return [None] * len(frame)
    paths: list[Path | None] = []
    missing: list[str] = []
    for row, value in enumerate(frame[column].fillna("").astype(str)):
        value = value.strip()
        if not value:
            paths.append(None)
            continue
        path = Path(value) if Path(value).is_absolute() else root / value
        if path.is_file():
            paths.append(path)
        else:
            paths.append(None)
            missing.append(f"{value} ({validate.row_label(table, row)})")
    validate.report_missing_media(modality, missing)
    return paths


def _load_interactions(root: Path, catalog: Catalog, config: DataConfig) -> pd.DataFrame:
    path = root / "interactions.csv"
    frame = validate.read_table(path, id_columns=["user_id", "item_id"])
    validate.require_columns(frame, path, ["user_id", "item_id"])
    validate.require_no_missing_ids(frame, path, "user_id")
    validate.require_no_missing_ids(frame, path, "item_id")
    known = pd.Index(catalog.item_ids)
    validate.require_known_items(frame, path, known, root / "items.csv")
    if "timestamp" in frame.columns and frame["timestamp"].isna().all():
        # Optional and left blank: the same as no column (a temporal split then says so).
        logger.info("%s: the timestamp column is empty in every row; treated as absent", path)
        frame = frame.drop(columns="timestamp")
    for column in ("rating", "timestamp"):
        if column in frame.columns:
            frame[column] = validate.require_numeric(frame, path, column)
    if SPLIT_COLUMN in frame.columns:
        frame[SPLIT_COLUMN] = validate.require_choice(frame, path, SPLIT_COLUMN, SPLIT_VALUES)
        if config.split != "given":
            logger.warning("%s has a %s column, ignored because data.split=%s; set data.split: "
                           "given to use it", path, SPLIT_COLUMN, config.split)
    elif config.split == "given":
        raise DataError(f"{path}: data.split is 'given' but there is no {SPLIT_COLUMN} column; "
                        f"add one holding {', '.join(SPLIT_VALUES)} per row")
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


def load_test_interactions(path: str | Path, dataset: Dataset) -> pd.DataFrame:
    """A user-supplied test set (CSV/JSONL/Parquet with ``user_id``, ``item_id``), checked
    against the dataset like interactions.csv, with an ``item_index`` column.

    Its users must be known to the model (in interactions.csv or users.csv): an unknown user
    has no row to be scored from, so it is named (file, line, value) rather than skipped.
    """
    path = Path(path).expanduser()
    frame = validate.read_table(path, id_columns=["user_id", "item_id"])
    validate.require_columns(frame, path, ["user_id", "item_id"])
    validate.require_no_missing_ids(frame, path, "user_id")
    validate.require_no_missing_ids(frame, path, "item_id")
    known = pd.Index(dataset.catalog.item_ids)
    validate.require_known_items(frame, path, known, dataset.root / "items.csv")
    users = pd.Index(dataset.user_ids.astype(str))
    unknown = frame.index[~frame["user_id"].astype(str).isin(users)]
    if len(unknown):
        where = ", ".join(f"{validate.row_label(path, i)} ({frame['user_id'].iloc[i]!r})"
                          for i in unknown[:validate.SHOW_AT_MOST])
        raise DataError(f"{path}: {len(unknown)} row(s) name users the model does not know: "
                        f"{where}. Add them to users.csv (then retrain) or drop those rows.")
    frame = frame[["user_id", "item_id"]].astype(object).reset_index(drop=True)
    frame["item_index"] = known.get_indexer(frame["item_id"]).astype(np.int64)
    return frame


def load_candidates(path: str | Path, catalog: Catalog) -> np.ndarray:
    """Item indices from a text file of item ids, one per line ("rank only these items").

    Blank lines and lines starting with ``#`` are skipped; an unknown id is named with its line.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"candidates file not found: {path}")
    lookup = pd.Index(catalog.item_ids.astype(str))
    indices, bad = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        position = lookup.get_indexer([item])[0]
        if position < 0:
            bad.append(f"{path.name} line {number} ({item!r})")
        indices.append(position)
    if bad:
        shown = ", ".join(bad[:validate.SHOW_AT_MOST])
        raise DataError(f"{path}: {len(bad)} candidate item(s) not in the catalogue: {shown}")
    if not indices:
        raise DataError(f"{path}: no item ids (one per line expected)")
    return np.unique(np.asarray(indices, np.int64))


def _load_users(root: Path, config: DataConfig) -> tuple[pd.DataFrame | None, tuple[str, ...]]:
    path = root / "users.csv"
    if not path.is_file():
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
    frame["user_id"] = frame["user_id"].astype(object)
    return frame, columns


def load_items_table(path: str | Path, columns: ModalityColumns) -> Catalog:
    """An items table read with a known schema (a catalogue update of an exported model): the
    same checks, text joining and media path resolution as a dataset folder's items table.
    Media paths are relative to the table's folder."""
    path = Path(path)
    frame = validate.read_table(path, id_columns=["item_id"], all_strings=True)
    validate.require_columns(frame, path, ["item_id"])
    validate.require_no_missing_ids(frame, path, "item_id")
    validate.require_unique(frame, path, "item_id")
    return Catalog(
        item_ids=frame["item_id"].to_numpy(dtype=object),
        texts=_join_text(frame, tuple(c for c in columns.text if c in frame.columns)),
        image_paths=_media_paths(frame, path.parent, columns.image
                                 if columns.image in frame.columns else None, "image", path),
        audio_paths=_media_paths(frame, path.parent, columns.audio
                                 if columns.audio in frame.columns else None, "audio", path),
        columns=columns,
        frame=frame,
    )
