"""Evaluation: the item embedding space as TensorBoard Projector files (after training).

``tensorboard --logdir <run>/logs`` then shows the catalogue in the Projector tab: every item a
point (PCA, t-SNE or UMAP of its embedding), labelled by id and title from ``metadata.tsv``, drawn
as its poster thumbnail from ``sprite.png`` where it has one. Clusters of posters or genres
that sit together are the quickest check that content reached the embedding.

Written to ``<logs>/projector/`` (a TensorBoard run of its own): a TF2 checkpoint of the
embedding variable, ``metadata.tsv``, ``sprite.png`` and ``projector_config.pbtxt``. The folder
is built under a temporary name (``files.atomic_path``) and swapped in: the old folder renamed
aside, the new one renamed in, then the old one deleted, so a reader never sees half of one and
a kill leaves a whole one (before, the old folder was deleted first). The temporary folders of
killed evaluates are removed by the next one (``files.remove_stale_temps``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorboard.plugins import projector

from tfmmrec.files import atomic_path, remove_stale_temps

logger = logging.getLogger(__name__)

TENSOR_NAME = "item_embeddings/.ATTRIBUTES/VARIABLE_VALUE"
MAX_SPRITE_PIXELS = 8192  # TensorBoard's limit for one side of the sprite image
MISSING_TILE = 224  # light grey: items without an image


@dataclass
class ProjectorFiles:
    """Where the Projector files went and what they hold."""

    directory: Path
    rows: int
    sprite_tile: int | None  # thumbnail side in pixels (None: no sprite written)


def write_projector(log_dir: str | os.PathLike, embeddings: np.ndarray,
                    item_ids: Sequence, titles: Sequence[str] | None = None,
                    image_paths: Sequence[os.PathLike | str | None] | None = None,
                    tile: int = 64) -> ProjectorFiles:
    """Write the Projector files for ``embeddings`` (``[N, d]``, row i = item i).

    Args:
      log_dir: the run's TensorBoard directory (``<output_dir>/logs``).
      embeddings: item embeddings in catalogue order.
      item_ids: ``N`` ids, the first metadata column.
      titles: ``N`` labels (e.g. titles), the second column; tabs and newlines become spaces.
      image_paths: ``N`` image files or ``None``; with any image present a sprite is written
        (undecodable or missing images get a grey tile).
      tile: thumbnail side in pixels; shrunk so that the sprite stays within TensorBoard's
        8192 × 8192 limit (a sprite is skipped if even 1-pixel tiles would not fit).
    """
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"embeddings must be [N > 0, d]; got shape {embeddings.shape}")
    rows = embeddings.shape[0]
    for name, values in (("item_ids", item_ids), ("titles", titles),
                         ("image_paths", image_paths)):
        if values is not None and len(values) != rows:
            raise ValueError(f"{name} has {len(values)} entries for {rows} embeddings")
    if tile < 1:
        raise ValueError(f"tile must be >= 1 pixel, got {tile}")
    final = Path(log_dir) / "projector"
    # killed evaluates' folders (inside TensorBoard's logdir); live ones' are left alone
    remove_stale_temps(final)
    with atomic_path(final, directory=True, replace=True) as path:
        tmp = Path(path)
        tmp.mkdir()
        tf.train.Checkpoint(item_embeddings=tf.Variable(embeddings)).save(
            str(tmp / "embeddings"))
        _write_metadata(tmp / "metadata.tsv", item_ids, titles)
        config = projector.ProjectorConfig()
        embedding = config.embeddings.add()
        embedding.tensor_name = TENSOR_NAME
        embedding.metadata_path = "metadata.tsv"
        side = None
        if image_paths is not None and any(p is not None for p in image_paths):
            side = _write_sprite(tmp / "sprite.png", image_paths, tile)
            if side is not None:
                embedding.sprite.image_path = "sprite.png"
                embedding.sprite.single_image_dim.extend([side, side])
        projector.visualize_embeddings(str(tmp), config)
    logger.debug("wrote TensorBoard Projector files for %d items to %s", rows, final)
    return ProjectorFiles(final, rows, side)


def _clean(value) -> str:
    return " ".join(str(value).split())


def _write_metadata(path: Path, item_ids: Sequence, titles: Sequence[str] | None) -> None:
    """One header line, then one line per row (TensorBoard's multi-column format)."""
    lines = ["item_id\ttitle" if titles is not None else "item_id"]
    for i, item in enumerate(item_ids):
        lines.append(_clean(item) if titles is None else f"{_clean(item)}\t{_clean(titles[i])}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def sprite_tile_size(rows: int, tile: int) -> tuple[int, int | None]:
    """``(grid side in tiles, tile side in pixels or None if no sprite fits)``."""
    grid = math.ceil(math.sqrt(rows))
    side = min(tile, MAX_SPRITE_PIXELS // grid)
    return grid, side if side >= 1 else None


def _write_sprite(path: Path, image_paths, tile: int) -> int | None:
    """Thumbnails in row-major order on a square grid; returns the tile side used."""
    from PIL import Image, UnidentifiedImageError

    grid, side = sprite_tile_size(len(image_paths), tile)
    if side is None:
        logger.warning("%d items are too many for one %d-pixel sprite; the Projector shows "
                       "points without thumbnails", len(image_paths), MAX_SPRITE_PIXELS)
        return None
    sprite = Image.new("RGB", (grid * side, grid * side), (MISSING_TILE,) * 3)
    for i, image_path in enumerate(image_paths):
        if image_path is None:
            continue
        try:
            with Image.open(image_path) as image:
                thumb = image.convert("RGB").resize((side, side))
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            logger.debug("sprite: skipping %s (%s)", image_path, exc)
            continue
        sprite.paste(thumb, ((i % grid) * side, (i // grid) * side))
    sprite.save(path)
    return side
