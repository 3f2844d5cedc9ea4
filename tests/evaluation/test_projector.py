"""Tests for tfmmrec.evaluation.projector: TensorBoard Projector files of the item embeddings."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from PIL import Image
from tensorboard.plugins import projector

from tests.conftest import derive_config
from tfmmrec import pipeline
from tfmmrec.evaluation.projector import (
    MAX_SPRITE_PIXELS,
    MISSING_TILE,
    TENSOR_NAME,
    sprite_tile_size,
    write_projector,
)
from tfmmrec.files import writer_tag

EMBEDDINGS = np.arange(15, dtype=np.float32).reshape(5, 3)
IDS = ["i0", "i1", "i2", "i3", "i4"]
TITLES = ["Toy Story", "Heat\t(1995)", "A\nB", "Up", "Her"]


def read_config(directory) -> projector.ProjectorConfig:
    config = projector.ProjectorConfig()
    text_format.Parse((directory / "projector_config.pbtxt").read_text(), config)
    return config


@pytest.fixture()
def images(tmp_path):
    red, blue = tmp_path / "red.png", tmp_path / "blue.bmp"
    Image.new("RGB", (40, 30), (255, 0, 0)).save(red)
    Image.new("RGB", (20, 20), (0, 0, 255)).save(blue)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    return [red, None, blue, broken, None]


def test_files_hold_every_item_in_catalogue_order(tmp_path, images):
    files = write_projector(tmp_path / "logs", EMBEDDINGS, IDS, TITLES, images, tile=16)
    directory = tmp_path / "logs" / "projector"
    assert files.directory == directory and files.rows == 5 and files.sprite_tile == 16
    checkpoint = tf.train.latest_checkpoint(str(directory))
    np.testing.assert_array_equal(tf.train.load_checkpoint(checkpoint).get_tensor(TENSOR_NAME),
                                  EMBEDDINGS)
    lines = (directory / "metadata.tsv").read_text().splitlines()
    assert lines == ["item_id\ttitle", "i0\tToy Story", "i1\tHeat (1995)", "i2\tA B", "i3\tUp",
                     "i4\tHer"]
    config = read_config(directory)
    (embedding,) = config.embeddings
    assert embedding.tensor_name == TENSOR_NAME and embedding.metadata_path == "metadata.tsv"
    assert embedding.sprite.image_path == "sprite.png"
    assert list(embedding.sprite.single_image_dim) == [16, 16]
    assert not list(tmp_path.joinpath("logs").glob(".projector*"))


def test_sprite_tiles_follow_row_order_with_grey_for_missing_images(tmp_path, images):
    write_projector(tmp_path / "logs", EMBEDDINGS, IDS, TITLES, images, tile=16)
    sprite = np.asarray(Image.open(tmp_path / "logs" / "projector" / "sprite.png"))
    assert sprite.shape == (3 * 16, 3 * 16, 3)  # 5 items on a 3 × 3 grid

    def tile(row):
        return sprite[(row // 3) * 16 + 8, (row % 3) * 16 + 8].tolist()

    assert tile(0) == [255, 0, 0] and tile(2) == [0, 0, 255]
    grey = [MISSING_TILE] * 3
    assert tile(1) == grey and tile(3) == grey and tile(4) == grey  # none, broken, none


def test_without_images_no_sprite_and_rewriting_replaces_the_files(tmp_path):
    write_projector(tmp_path, EMBEDDINGS, IDS, TITLES, [None] * 5)
    write_projector(tmp_path, EMBEDDINGS[:2], IDS[:2])
    directory = tmp_path / "projector"
    assert not (directory / "sprite.png").exists()
    assert (directory / "metadata.tsv").read_text().splitlines() == ["item_id", "i0", "i1"]
    assert not read_config(directory).embeddings[0].sprite.image_path


def test_sprite_tiles_shrink_to_fit_tensorboards_limit():
    assert sprite_tile_size(1682, 64) == (42, 64)
    grid, side = sprite_tile_size(1_000_000, 64)
    assert grid == 1000 and side == MAX_SPRITE_PIXELS // 1000 and grid * side <= MAX_SPRITE_PIXELS
    assert sprite_tile_size(MAX_SPRITE_PIXELS ** 2 + 1, 64)[1] is None


@pytest.mark.parametrize("kwargs, message", [
    ({"item_ids": IDS[:4]}, "item_ids has 4 entries for 5"),
    ({"titles": TITLES[:2]}, "titles has 2 entries"),
    ({"embeddings": np.zeros((0, 3))}, r"\[N > 0, d\]"),
    ({"tile": 0}, "tile must be"),
])
def test_inconsistent_inputs_are_rejected(tmp_path, kwargs, message):
    arguments = {"embeddings": EMBEDDINGS, "item_ids": IDS, "titles": TITLES, **kwargs}
    with pytest.raises(ValueError, match=message):
        write_projector(tmp_path, **arguments)
    assert not (tmp_path / "projector").exists()


def test_evaluate_writes_the_projector_for_the_whole_catalogue(tiny_config, tiny_trained,
                                                                tiny_workspace, tmp_path):
    config = derive_config(tiny_config, tmp_path)
    pipeline.evaluate(config, model=tiny_trained.model, workspace=tiny_workspace,
                      baselines=False)
    directory = tmp_path / "run" / "logs" / "projector"
    catalog = tiny_workspace.dataset.catalog
    lines = (directory / "metadata.tsv").read_text().splitlines()
    assert len(lines) == len(catalog) + 1
    assert [line.split("\t")[0] for line in lines[1:]] == [str(i) for i in catalog.item_ids]
    values = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(directory))).get_tensor(
        TENSOR_NAME)
    np.testing.assert_allclose(values, pipeline.embed_items(tiny_trained.model, len(catalog)),
                               atol=1e-6)
    side = read_config(directory).embeddings[0].sprite.single_image_dim[0]
    grid = int(np.ceil(np.sqrt(len(catalog))))
    assert Image.open(directory / "sprite.png").size == (grid * side, grid * side)


def a_finished_pid() -> int:
    """The pid of a process of this machine that has exited."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    return int(child.stdout)


def test_a_killed_writers_temp_folder_is_removed_and_a_live_ones_kept(tmp_path):
    """A killed evaluate's temp folder sat in TensorBoard's logdir for good: each evaluate
    cleared only its own pid's. Folders of writers that still run are theirs."""
    dead = tmp_path / f".projector.{a_finished_pid()}.{writer_tag()}.tmp"
    live = tmp_path / f".projector.{os.getppid()}.{writer_tag()}.tmp"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "metadata.tsv").write_text("item_id\n")
    write_projector(tmp_path, EMBEDDINGS, IDS)
    assert not dead.exists() and live.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "projector"])


def test_an_interrupted_swap_keeps_the_previous_projector(tmp_path, monkeypatch):
    """The old folder used to be deleted before the new one was renamed in: an interruption
    between the two left no Projector files. Now the old one is renamed aside and put back."""
    write_projector(tmp_path, EMBEDDINGS[:2], IDS[:2])
    final = str(tmp_path / "projector")
    rename, replace = os.rename, os.replace

    def interrupted(move):
        def moving(source, target):
            if os.fspath(target) == final and ".projector." in os.fspath(source) \
                    and not calls:
                calls.append(source)
                raise KeyboardInterrupt  # SIGTERM, as `tfmmrec evaluate` turns it
            return move(source, target)
        return moving

    calls: list = []
    monkeypatch.setattr(os, "rename", interrupted(rename))
    monkeypatch.setattr(os, "replace", interrupted(replace))
    with pytest.raises(KeyboardInterrupt):
        write_projector(tmp_path, EMBEDDINGS, IDS)
    assert calls
    assert (tmp_path / "projector" / "metadata.tsv").read_text().splitlines() == [
        "item_id", "i0", "i1"]
    assert [p.name for p in tmp_path.iterdir()] == ["projector"]  # no temp folder left


def test_an_interrupt_as_the_old_projector_is_moved_aside_puts_it_back(tmp_path, monkeypatch):
    """A signal is raised when the call it arrived in returns: one during the first rename
    (the old folder moved aside) left no Projector folder, outside the swap's ``try``."""
    write_projector(tmp_path, EMBEDDINGS[:2], IDS[:2])
    final = str(tmp_path / "projector")
    rename = os.rename

    def moved_then_interrupted(source, target):
        rename(source, target)
        if os.fspath(source) == final:  # the old folder, aside
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "rename", moved_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_projector(tmp_path, EMBEDDINGS, IDS)
    assert (tmp_path / "projector" / "metadata.tsv").read_text().splitlines() == [
        "item_id", "i0", "i1"]
    assert [p.name for p in tmp_path.iterdir()] == ["projector"]  # no temp folder left
