"""Tests for tfmmrec.towers.cache: frozen-encoder features reused, invalidated and rebuilt."""

from __future__ import annotations

import dataclasses
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tests.conftest import derive_config
from tests.data.folders import write_wav
from tfmmrec.config import TextTowerConfig
from tfmmrec.towers import cache
from tfmmrec.towers.cache import FeatureCache, by_length, encode_catalog, pad_waveforms
from tfmmrec.towers.text import TextEncoder, build_text_encoder

TEXT = TextTowerConfig(hidden_dim=16, num_layers=1, num_heads=2, intermediate_dim=32,
                       sequence_length=16)


@pytest.fixture(scope="module")
def catalog(tiny_workspace):
    return tiny_workspace.dataset.catalog


@pytest.fixture(scope="module")
def encoder(catalog):
    return build_text_encoder(TEXT, list(catalog.texts))


def encode(catalog, encoder, directory):
    return encode_catalog(catalog, encoder, directory, batch_size=32, progress=False)


def with_text(catalog, row: int, text: str):
    texts = catalog.texts.copy()
    texts[row] = text
    return dataclasses.replace(catalog, texts=texts)


def test_first_run_computes_and_second_reuses_every_entry(catalog, encoder, tmp_path):
    first, stats = encode(catalog, encoder, tmp_path)
    assert (stats.reused, stats.computed) == (0, len(catalog))
    assert FeatureCache(tmp_path, encoder).path.is_file()
    again, stats = encode(catalog, encoder, tmp_path)
    assert (stats.reused, stats.computed) == (len(catalog), 0)
    np.testing.assert_array_equal(again.values, first.values)
    np.testing.assert_array_equal(again.mask, first.mask)


def test_changing_one_items_text_recomputes_exactly_that_item(catalog, encoder, tmp_path):
    before, _ = encode(catalog, encoder, tmp_path)
    edited = with_text(catalog, 5, "a brand new plot about a lighthouse")
    after, stats = encode(edited, encoder, tmp_path)
    assert (stats.reused, stats.computed) == (len(catalog) - 1, 1)
    changed = np.flatnonzero(np.any(after.values != before.values, axis=1))
    assert changed.tolist() == [5]


def test_cache_file_is_keyed_by_encoder_identity(catalog, encoder, tmp_path):
    other = build_text_encoder(dataclasses.replace(TEXT, pooling="cls"), list(catalog.texts))
    encode(catalog, encoder, tmp_path)
    _, stats = encode(catalog, other, tmp_path)
    assert stats.computed == len(catalog)
    assert FeatureCache(tmp_path, other).path != FeatureCache(tmp_path, encoder).path
    assert len(list(tmp_path.glob("text-*.npz"))) == 2


CORRUPTIONS = {
    "garbage": lambda data: b"not a cache at all",
    "empty": lambda data: b"",
    "truncated": lambda data: data[: len(data) // 2],  # e.g. a copy cut short
    "zip-header-only": lambda data: data[:30],
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corrupt_cache_file_is_ignored_and_rebuilt(catalog, encoder, tmp_path, caplog, corrupt):
    expected, _ = encode(catalog, encoder, tmp_path)
    path = FeatureCache(tmp_path, encoder).path
    path.write_bytes(corrupt(path.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="tfmmrec"):
        rebuilt, stats = encode(catalog, encoder, tmp_path)
    assert stats.computed == len(catalog)
    assert "ignoring unreadable cache file" in caplog.text
    np.testing.assert_allclose(rebuilt.values, expected.values, atol=1e-6)
    assert len(FeatureCache(tmp_path, encoder).load()) == len(set(catalog.texts))


def test_no_temporary_files_are_left_behind(catalog, encoder, tmp_path):
    encode(catalog, encoder, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [FeatureCache(tmp_path, encoder).path.name]


def test_without_cache_dir_nothing_is_written(catalog, encoder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    content, stats = encode(catalog, encoder, None)
    assert stats.computed == len(catalog) and content.mask.all()
    assert list(tmp_path.iterdir()) == []


def test_items_without_content_are_masked_and_not_cached(catalog, encoder, tmp_path):
    edited = with_text(catalog, 2, "")
    content, stats = encode(edited, encoder, tmp_path)
    assert not content.mask[2] and np.all(content.values[2] == 0)
    assert stats.computed == len(catalog) - 1


def test_content_that_did_not_decode_is_tried_again_and_never_rewrites_the_cache(
        tiny_workspace, tmp_path):
    """Whether a file decodes depends on the limits too (raised since), so a failure is not
    cached; a run whose only new content fails leaves the cache file as it was."""
    from tfmmrec.data.dataset import load_dataset
    from tfmmrec.towers.audio import build_audio_encoder

    config = tiny_workspace.config
    root = shutil.copytree(tiny_workspace.dataset.root, tmp_path / "data")
    encoder = build_audio_encoder(config.audio)

    def run():
        return encode_catalog(load_dataset(str(root)).catalog, encoder, tmp_path / "cache",
                              max_seconds=config.audio.max_seconds, progress=False)

    catalog = load_dataset(str(root)).catalog
    present = int(catalog.presence("audio").sum())
    broken = next(p for p in catalog.audio_paths if p is not None)
    good = broken.read_bytes()
    broken.write_bytes(b"RIFF0000WAVE")  # a header and nothing else
    content, stats = run()
    assert (stats.computed, stats.failed) == (present - 1, 1)
    assert int(content.mask.sum()) == present - 1
    cached = FeatureCache(tmp_path / "cache", encoder)
    written = cached.path.stat().st_mtime_ns
    assert len(cached.load()) == present - 1
    stats = run()[1]
    assert (stats.reused, stats.computed, stats.failed) == (present - 1, 0, 1)  # tried again
    assert cached.path.stat().st_mtime_ns == written
    broken.write_bytes(good)
    content, stats = run()
    assert (stats.reused, stats.computed) == (present - 1, 1) and content.mask.sum() == present


def test_the_summary_line_counts_items_and_adds_up_to_the_catalogue(tmp_path, caplog):
    """Reused + computed + without = every item: a file that did not decode is an item without
    the modality (named as undecodable), not a computed one; items sharing one file count once
    each. (The summary said "40 reused, 19 computed, 7 without" of 60 items.)"""
    from tests.data.folders import summary_folder, write_png
    from tfmmrec.config import ImageTowerConfig
    from tfmmrec.data.dataset import load_dataset
    from tfmmrec.towers.image import build_image_encoder

    root = summary_folder(tmp_path / "d")
    encoder = build_image_encoder(ImageTowerConfig(image_size=16, cnn_filters=[4]))

    def run():
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="tfmmrec.towers.cache"):
            content, stats = encode_catalog(load_dataset(str(root)).catalog, encoder,
                                            tmp_path / "cache", image_size=16, progress=False)
        assert stats.reused + stats.computed + int((~content.mask).sum()) == 7
        return content, stats, [r.getMessage() for r in caplog.records
                                if r.name == "tfmmrec.towers.cache" and r.levelno == logging.INFO]

    content, stats, lines = run()
    assert content.mask.tolist() == [True] * 5 + [False, False]
    assert (stats.reused, stats.computed, stats.failed) == (0, 5, 1)
    assert lines == ["image features: 0 reused from cache, 5 computed, 2 items without image "
                     "(1 of them undecodable)"]
    write_png(root / "images" / "i2.png", color=(1, 2, 250))
    content, stats, lines = run()
    assert (stats.reused, stats.computed, stats.failed) == (4, 1, 1)
    assert lines == ["image features: 4 reused from cache, 1 computed, 2 items without image "
                     "(1 of them undecodable)"]
    (root / "images" / "broken.png").unlink()
    content, stats, lines = run()
    assert (stats.reused, stats.computed, stats.failed) == (5, 0, 0)
    assert lines == ["image features: 5 reused from cache, 0 computed, 2 items without image"]


def test_a_media_file_that_cannot_be_read_is_named_and_the_item_keeps_the_rest(
        tiny_workspace, tmp_path, caplog):
    """An I/O error reading a file (here: a folder where the file was) is what a file that does
    not decode is: a warning naming it, the item without that modality, not a traceback."""
    from tfmmrec.data.dataset import load_dataset
    from tfmmrec.towers.audio import build_audio_encoder

    config = tiny_workspace.config
    root = shutil.copytree(tiny_workspace.dataset.root, tmp_path / "data")
    catalog = load_dataset(str(root)).catalog
    present = int(catalog.presence("audio").sum())
    unreadable = next(p for p in catalog.audio_paths if p is not None)
    unreadable.unlink()
    unreadable.mkdir()  # reading it raises IsADirectoryError, an OSError
    with caplog.at_level(logging.WARNING):
        content, _ = encode_catalog(catalog, build_audio_encoder(config.audio), None,
                                    max_seconds=config.audio.max_seconds, progress=False)
    assert int(content.mask.sum()) == present - 1
    assert "missing, unreadable or undecodable" in caplog.text and str(unreadable) in caplog.text


def test_media_entries_are_keyed_by_file_bytes(tiny_workspace, tmp_path):
    """Rewriting one clip with new sound recomputes it; rewriting identical bytes does not."""
    from tfmmrec.towers.audio import build_audio_encoder

    config = tiny_workspace.config
    root = shutil.copytree(tiny_workspace.dataset.root, tmp_path / "data")
    from tfmmrec.data.dataset import load_dataset

    catalog = load_dataset(str(root)).catalog
    encoder = build_audio_encoder(config.audio)

    def run():
        return encode_catalog(load_dataset(str(root)).catalog, encoder, tmp_path / "cache",
                              max_seconds=config.audio.max_seconds, progress=False)[1]

    present = int(catalog.presence("audio").sum())
    assert run().computed == present
    first = next(p for p in catalog.audio_paths if p is not None)
    first.write_bytes(first.read_bytes())
    assert (run().reused, run().computed) == (present, 0)
    write_wav(first, freq=1234.0)
    stats = run()
    assert (stats.reused, stats.computed) == (present - 1, 1)


def test_second_prepare_reuses_every_cached_feature(tiny_config, tmp_path):
    from tfmmrec import pipeline

    config = derive_config(tiny_config, tmp_path, f"train.cache_dir={tmp_path / 'cache'}")
    first = pipeline.prepare(config, progress=False)
    second = pipeline.prepare(config, progress=False)
    assert set(second.cache_stats) == {"text", "image", "audio"}
    for modality, stats in second.cache_stats.items():
        present = int(first.dataset.catalog.presence(modality).sum())
        assert first.cache_stats[modality].computed == present, modality
        assert (stats.reused, stats.computed) == (present, 0), modality
        np.testing.assert_array_equal(second.contents[modality].values,
                                      first.contents[modality].values)


def test_prepare_after_editing_one_items_text_recomputes_only_that_item(tiny_config, tmp_path):
    """Reordering words keeps the catalogue's vocabulary, so the text encoder stays the same."""
    from tfmmrec import pipeline

    root = shutil.copytree(tiny_config.data.path, tmp_path / "data")
    config = derive_config(tiny_config, tmp_path, f"data.path={root}",
                           f"train.cache_dir={tmp_path / 'cache'}")
    first = pipeline.prepare(config, progress=False)
    items = pd.read_csv(root / "items.csv", dtype=str, keep_default_na=False)
    items.loc[3, "title"] = " ".join(reversed(items.loc[3, "title"].split()))
    items.to_csv(root / "items.csv", index=False)
    second = pipeline.prepare(config, progress=False)
    assert second.encoder_identities() == first.encoder_identities()
    stats = second.cache_stats["text"]
    assert (stats.reused, stats.computed) == (len(items) - 1, 1)
    assert second.cache_stats["image"].computed == second.cache_stats["audio"].computed == 0


def test_pad_waveforms_zero_pads_and_records_lengths():
    batch = pad_waveforms([np.ones(3, np.float32), np.ones(5, np.float32)])
    assert batch["waveform"].shape == (2, 5)
    assert batch["length"].tolist() == [3, 5]
    assert batch["waveform"][0, 3:].tolist() == [0.0, 0.0]


def test_by_length_orders_indices_by_text_length_stably():
    texts = ["ccc", "a", "bb", "dd", ""]
    assert by_length([0, 1, 2, 3, 4], texts) == [4, 1, 2, 3, 0]
    assert by_length([3, 0, 2], texts) == [3, 2, 0]  # ties keep the given order


def test_text_is_encoded_in_length_sorted_batches_and_read_out_in_catalogue_order(
        catalog, encoder, monkeypatch):
    monkeypatch.setattr(cache, "COMPILE_MIN_BATCHES", 10**9)  # eager: the spy reads values
    batches = []

    class Recording(TextEncoder):
        def call(self, texts, training=False):
            batches.append([t.decode() for t in texts.numpy()])
            return super().call(texts, training)

    recording = Recording(encoder.preprocessor, encoder.backbone, encoder.pooling, {})
    content, _ = encode_catalog(catalog, recording, None, batch_size=8, progress=False)
    lengths = [len(t) for batch in batches for t in batch]
    assert lengths == sorted(lengths)
    present = [i for i, t in enumerate(catalog.texts) if t]
    np.testing.assert_allclose(content.values[present],
                               encoder(np.array([catalog.texts[i] for i in present])).numpy(),
                               atol=1e-5)


@pytest.mark.parametrize("modality", ["text", "audio"])
def test_compiled_encoding_matches_eager_and_traces_once(tiny_workspace, modality, monkeypatch):
    """Many batches run as one graph (ragged last batch, clips of different lengths included)
    and give the eager features."""
    catalog, encoder = tiny_workspace.dataset.catalog, tiny_workspace.encoders[modality]
    traces = []
    original = type(encoder).call

    def counting(self, *args, **kwargs):
        traces.append(tf.executing_eagerly())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(encoder), "call", counting)
    compiled, _ = encode_catalog(catalog, encoder, None, batch_size=7, progress=False)
    assert traces.count(False) == 1  # one trace for every batch
    monkeypatch.setattr(cache, "COMPILE_MIN_BATCHES", 10**9)
    eager, _ = encode_catalog(catalog, encoder, None, batch_size=7, progress=False)
    np.testing.assert_array_equal(compiled.mask, eager.mask)
    np.testing.assert_allclose(compiled.values, eager.values, atol=1e-5)


def test_the_tfrecords_path_counts_items_as_the_folder_path_does(tiny_config, tmp_path):
    """From prepared shards, an item whose file did not decode when they were written is
    ``failed`` (it was counted reused, so the summary did not add up), on every run."""
    from tests.data.folders import summary_folder
    from tfmmrec.config import load_config
    from tfmmrec.data import tfrecords
    from tfmmrec.data.dataset import load_dataset
    from tfmmrec.towers.image import build_image_encoder

    root = summary_folder(tmp_path / "d")
    config = load_config(tiny_config, [f"data.path={root}", "data.split=random"])
    dataset = load_dataset(config.data)
    records = tfrecords.write_tfrecords(config, tmp_path / "records", dataset=dataset,
                                        workers=1, shards=2, progress=False).directory
    encoder = build_image_encoder(config.image)
    folder = encode_catalog(dataset.catalog, encoder, tmp_path / "folder", progress=False,
                            image_size=config.image.image_size)

    def run(cache_dir):
        content, stats = cache.encode_records(records, encoder, cache_dir, progress=False)
        assert stats.reused + stats.computed + int((~content.mask).sum()) == 7
        return content, stats

    content, stats = run(tmp_path / "records-cache")
    assert (stats.reused, stats.computed, stats.failed) == (0, 5, 1) == \
        dataclasses.astuple(folder[1])
    assert content.mask.tolist() == folder[0].mask.tolist() == [True] * 5 + [False, False]
    np.testing.assert_allclose(content.values, folder[0].values, atol=1e-5, rtol=0)
    assert dataclasses.astuple(run(tmp_path / "records-cache")[1]) == (5, 0, 1)
    assert dataclasses.astuple(run(tmp_path / "folder")[1]) == (5, 0, 1)  # one cache, two paths
