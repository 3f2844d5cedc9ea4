"""Tests for tfmmrec.data.tfrecords: prepare (folder → shards), resume, readers, training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import derive_config
from tfmmrec import cli, pipeline
from tfmmrec.config import load_config
from tfmmrec.data import tfrecords
from tfmmrec.data.media import load_audio, load_image
from tfmmrec.errors import ConfigError, DataError
from tfmmrec.towers.cache import content_keys


@pytest.fixture(scope="module")
def prepared(tiny_config, tiny_workspace, tmp_path_factory) -> tfrecords.Manifest:
    """The tiny demo folder prepared in this process (one worker), 3 item shards."""
    out = tmp_path_factory.mktemp("records") / "tiny"
    return tfrecords.write_tfrecords(tiny_config, out, dataset=tiny_workspace.dataset, workers=1,
                             shards=3, progress=False)


def read_items(manifest: tfrecords.Manifest) -> dict[str, np.ndarray]:
    batches = list(tfrecords.items_dataset(manifest, batch_size=32))
    return {key: np.concatenate([b[key].numpy() for b in batches]) for key in
            ("item_index", "item_id", "text", "text_key", "image", "image_key", "image_present",
             "audio_key", "audio_present")} | {
        "waveform": [row for b in batches for row in b["audio"]["waveform"].numpy()],
        "length": np.concatenate([b["audio"]["length"].numpy() for b in batches])}


def pairs(frame_or_batches) -> list[tuple[str, int]]:
    if hasattr(frame_or_batches, "columns"):
        frame = frame_or_batches
        return sorted(zip(frame["user_id"].astype(str), frame["item_index"].astype(int),
                          strict=True))
    return sorted((u.decode(), int(i)) for b in frame_or_batches
                  for u, i in zip(b["user_id"].numpy(), b["item_index"].numpy(), strict=True))



def records(path: str) -> list[tf.train.Example]:
    """A shard's records, parsed (serialised protos need not be byte-identical)."""
    return [tf.train.Example.FromString(record)
            for record in tf.data.TFRecordDataset(path).as_numpy_iterator()]


# --- what prepare writes --------------------------------------------------------------------


def test_prepare_writes_shards_and_a_manifest_last(prepared):
    files = {table: [f.rsplit("/", 1)[-1] for f in prepared.files(table)]
             for table in tfrecords.TABLES}
    assert files["items"] == [f"items-0000{i}-of-00003.tfrecord" for i in range(3)]
    assert prepared.num_items == 80 and prepared.count("items") == 80
    directory = Path(prepared.directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["image_size"] == 32 and manifest["modalities"] == ["text", "image", "audio"]
    assert not list(directory.glob(".*tmp*"))


def test_items_are_in_catalogue_order_with_raw_text(prepared, tiny_workspace):
    items = read_items(prepared)
    catalog = tiny_workspace.dataset.catalog
    np.testing.assert_array_equal(items["item_index"], np.arange(80))
    assert [i.decode() for i in items["item_id"]] == list(catalog.item_ids)
    assert [t.decode() for t in items["text"]] == list(catalog.texts)


def test_media_are_stored_decoded_as_the_folder_path_decodes_them(prepared, tiny_workspace):
    items = read_items(prepared)
    catalog = tiny_workspace.dataset.catalog
    image_row = next(i for i, p in enumerate(catalog.image_paths) if p is not None)
    np.testing.assert_allclose(items["image"][image_row],
                               load_image(catalog.image_paths[image_row], 32), atol=0.5 / 255)
    audio_row = next(i for i, p in enumerate(catalog.audio_paths) if p is not None)
    wave = load_audio(catalog.audio_paths[audio_row], 16000, 1.0)
    assert items["length"][audio_row] == len(wave)
    np.testing.assert_allclose(items["waveform"][audio_row][:len(wave)], wave, atol=1e-4)


def test_presence_and_content_keys_match_the_feature_cache(prepared, tiny_workspace):
    items = read_items(prepared)
    catalog = tiny_workspace.dataset.catalog
    for modality in ("text", "image", "audio"):
        expected = [k or "" for k in content_keys(catalog, modality)]
        assert [k.decode() for k in items[f"{modality}_key"]] == expected
    np.testing.assert_array_equal(items["image_present"], catalog.presence("image"))
    np.testing.assert_array_equal(items["audio_present"], catalog.presence("audio"))


def test_train_and_test_shards_hold_exactly_the_split(prepared, tiny_workspace):
    split = tiny_workspace.split
    for table, frame in (("train", split.train), ("test", split.test)):
        stream = tfrecords.interactions_dataset(prepared, table, 16, shuffle=False)
        assert pairs(stream) == pairs(frame)
        assert prepared.count(table) == len(frame)


def test_training_stream_is_endless_full_batches_reshuffled(prepared):
    stream = tfrecords.interactions_dataset(prepared, "train", 16, seed=3)
    assert stream.cardinality() == tf.data.INFINITE_CARDINALITY
    steps = prepared.count("train") // 16
    batches = list(stream.take(2 * steps))
    assert {len(b["item_index"]) for b in batches} == {16}
    assert batches[0]["item_index"].dtype == tf.int32
    first = np.concatenate([b["item_index"].numpy() for b in batches[:steps]])
    second = np.concatenate([b["item_index"].numpy() for b in batches[steps:]])
    assert not np.array_equal(first, second)


def test_asking_for_a_column_that_was_not_prepared_is_a_data_error(prepared):
    with pytest.raises(DataError, match="no timestamp column"):
        tfrecords.interactions_dataset(prepared, "train", 8, columns=("user_id", "timestamp"))


# --- resume, invalidation, and refusing unfinished output -----------------------------------


def test_running_prepare_again_keeps_every_finished_shard(prepared, tiny_config, tiny_workspace):
    before = {f: tf.io.gfile.stat(f).mtime_nsec for t in tfrecords.TABLES
              for f in prepared.files(t)}
    again = tfrecords.write_tfrecords(tiny_config, prepared.directory,
                                      dataset=tiny_workspace.dataset, workers=1, shards=3,
                                      progress=False)
    assert {f: tf.io.gfile.stat(f).mtime_nsec for f in before} == before
    assert again.shards == prepared.shards


def test_changed_settings_rewrite_the_directory(tiny_config, tiny_workspace, tmp_path):
    out = tmp_path / "records"
    tfrecords.write_tfrecords(tiny_config, out, dataset=tiny_workspace.dataset, workers=1, shards=2,
                      progress=False)
    bigger = load_config(tiny_config, ["image.image_size=40"])
    manifest = tfrecords.write_tfrecords(bigger, out, dataset=tiny_workspace.dataset, workers=1,
                                 shards=3, progress=False)
    assert manifest.image_size == 40
    assert sorted(p.name for p in out.glob("items-*")) == [
        f"items-0000{i}-of-00003.tfrecord" for i in range(3)]  # the 2-shard files are gone
    assert next(iter(tfrecords.items_dataset(manifest, 4)))["image"].shape[1:] == (40, 40, 3)



def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file()}


def test_a_finished_output_is_kept_whatever_the_worker_count(tiny_config, tiny_workspace,
                                                             tmp_path):
    """Workers size the default shard count but are not content: the same data and settings
    prepared for one worker are finished for two (``prepare --runner`` defaults to the cores)."""
    out = tmp_path / "records"
    first = tfrecords.write_tfrecords(tiny_config, out, dataset=tiny_workspace.dataset,
                                      workers=1, progress=False)
    before = snapshot(out)
    again = tfrecords.write_tfrecords(tiny_config, out, dataset=tiny_workspace.dataset,
                                      workers=2, progress=False)
    assert snapshot(out) == before and again.shards == first.shards
    two = tfrecords.write_tfrecords(tiny_config, out, dataset=tiny_workspace.dataset,
                                    workers=1, shards=2, progress=False)  # asked: rewritten
    assert len(two.files("items")) == 2 and not (out / tfrecords.REPLACEMENT).exists()


def test_a_failed_rewrite_keeps_the_finished_output(tiny_config, tiny_workspace, tmp_path,
                                                    monkeypatch):
    """Other settings are written beside a finished output, which stays whole and readable
    until every new shard exists; the next run keeps the new finished shards."""
    out = tmp_path / "records"
    tfrecords.write_tfrecords(tiny_config, out, dataset=tiny_workspace.dataset, workers=1,
                              shards=2, progress=False)
    before = snapshot(out)
    bigger = load_config(tiny_config, ["image.image_size=40"])
    write, calls = tfrecords.write_shard, []

    def fail_the_fifth(job):
        calls.append(job["file"])
        if len(calls) == 5:
            raise RuntimeError("disk unplugged")
        return write(job)

    monkeypatch.setattr(tfrecords, "write_shard", fail_the_fifth)
    with pytest.raises(RuntimeError, match="disk unplugged"):
        tfrecords.write_tfrecords(bigger, out, dataset=tiny_workspace.dataset, workers=1,
                                  shards=3, progress=False)
    assert {k: v for k, v in snapshot(out).items()
            if not k.startswith(tfrecords.REPLACEMENT)} == before
    assert tfrecords.load_manifest(out).image_size == 32
    kept = {f: (out / tfrecords.REPLACEMENT / f).stat().st_mtime_ns for f in calls[:4]}
    monkeypatch.setattr(tfrecords, "write_shard", write)
    manifest = tfrecords.write_tfrecords(bigger, out, dataset=tiny_workspace.dataset,
                                         workers=1, shards=3, progress=False)
    assert tfrecords.load_manifest(out).image_size == manifest.image_size == 40
    assert {f: (out / f).stat().st_mtime_ns for f in kept} == kept
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", "plan.json", *(f.rsplit("/", 1)[-1] for t in tfrecords.TABLES
                                         for f in manifest.files(t))])


def test_an_abandoned_replacement_is_removed_by_the_finished_outputs_own_run(
        tiny_config, tiny_workspace, tmp_path, monkeypatch):
    out = tmp_path / "records"
    tfrecords.write_tfrecords(tiny_config, out, dataset=tiny_workspace.dataset, workers=1,
                              shards=2, progress=False)
    before = snapshot(out)
    monkeypatch.setattr(tfrecords, "_run_jobs", lambda *a: {})  # writes nothing: a failed run
    with pytest.raises(DataError, match=r"\.replacement: 9 shard\(s\) were not written"):
        tfrecords.write_tfrecords(load_config(tiny_config, ["image.image_size=40"]), out,
                                  dataset=tiny_workspace.dataset, workers=1, shards=3,
                                  progress=False)
    assert (out / tfrecords.REPLACEMENT / "plan.json").is_file()
    monkeypatch.undo()
    tfrecords.write_tfrecords(tiny_config, out, dataset=tiny_workspace.dataset, workers=1,
                              shards=2, progress=False)
    assert snapshot(out) == before

def test_a_directory_without_manifest_is_never_read(tmp_path):
    (tmp_path / "items-00000-of-00001.tfrecord").write_bytes(b"half a shard")
    with pytest.raises(DataError, match=r"no finished TFRecords.*run `tfmmrec prepare`"):
        tfrecords.load_manifest(tmp_path)


def test_a_manifest_naming_a_missing_shard_is_a_data_error(prepared, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(prepared.directory, copy)
    next(copy.glob("train-*")).unlink()
    with pytest.raises(DataError, match=r"1 shard\(s\) listed in manifest.json are missing"):
        tfrecords.load_manifest(copy)


def test_shards_prepared_with_other_settings_are_refused(prepared, tiny_config, tiny_workspace):
    other = load_config(tiny_config, ["image.image_size=48", "data.seed=7"])
    with pytest.raises(ConfigError, match=r"image_size: prepared 32, config 48.*split"):
        tfrecords.check_compatible(prepared, other, tiny_workspace.dataset)
    tfrecords.check_compatible(prepared, tiny_config, tiny_workspace.dataset)


def test_any_tensorflow_filesystem_works(tiny_config, tiny_workspace):
    """``ram://`` stands in for gs:// here: every read and write goes through tf.io.gfile."""
    manifest = tfrecords.write_tfrecords(tiny_config, "ram://tfmmrec-test/records",
                                 dataset=tiny_workspace.dataset, workers=1, shards=2,
                                 progress=False)
    loaded = tfrecords.load_manifest("ram://tfmmrec-test/records")
    assert loaded.files("train")[0].startswith("ram://tfmmrec-test/records/train-")
    stream = tfrecords.interactions_dataset(loaded, "train", 8, shuffle=False)
    assert pairs(stream) == pairs(tiny_workspace.split.train)
    assert manifest.count("items") == 80


# --- parallel workers, CLI, training --------------------------------------------------------


def test_parallel_workers_write_the_same_records(prepared, tiny_config, tiny_workspace,
                                                 tmp_path):
    parallel = tfrecords.write_tfrecords(tiny_config, tmp_path / "parallel",
                                 dataset=tiny_workspace.dataset, workers=2, shards=3,
                                 progress=False)
    for table in tfrecords.TABLES:
        for a, b in zip(parallel.files(table), prepared.files(table), strict=True):
            assert records(a) == records(b)


def test_prepare_refuses_an_unwritable_output_before_decoding(tiny_config, tiny_workspace,
                                                              tmp_path, monkeypatch):
    monkeypatch.setattr(tfrecords, "_jobs", lambda *a: pytest.fail("decoded before checking"))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(DataError, match=r"cannot write TFRecords to .*a-file/out"):
        tfrecords.write_tfrecords(tiny_config, blocker / "out", dataset=tiny_workspace.dataset,
                          progress=False)


def test_prepare_refuses_a_disk_too_small_before_decoding(tiny_config, tiny_workspace,
                                                          tmp_path, monkeypatch):
    monkeypatch.setattr(tfrecords, "_jobs", lambda *a: pytest.fail("decoded before checking"))
    monkeypatch.setattr(tfrecords.shutil, "disk_usage",
                        lambda path: type("Usage", (), {"free": 1000})())
    with pytest.raises(DataError, match="GiB free but the TFRecords need about"):
        tfrecords.write_tfrecords(tiny_config, tmp_path / "out", dataset=tiny_workspace.dataset,
                          progress=False)


def test_cli_prepare(tiny_config, tmp_path, capsys):
    config = derive_config(tiny_config, tmp_path)
    config.to_yaml(tmp_path / "config.yaml")
    code = cli.main(["-q", "prepare", "--config", str(tmp_path / "config.yaml"), "--output",
                     str(tmp_path / "records"), "--workers", "1", "--shards", "2"])
    assert code == 0
    out = capsys.readouterr().out
    assert "80 items" in out and f"train.tfrecords={tmp_path / 'records'}" in out
    assert (tmp_path / "records" / "manifest.json").is_file()


def test_training_from_shards(prepared, tiny_config, tmp_path):
    """Features come from the decoded item shards (≈ the folder's), batches from the stream."""
    config = derive_config(tiny_config, tmp_path, f"train.tfrecords={prepared.directory}",
                           f"train.cache_dir={tmp_path / 'cache'}")
    ws = pipeline.prepare(config, progress=False)
    folder = pipeline.prepare(tiny_config, progress=False)
    for modality in ("text", "image", "audio"):
        np.testing.assert_array_equal(ws.contents[modality].mask, folder.contents[modality].mask)
        scale = np.abs(folder.contents[modality].values).max()
        np.testing.assert_allclose(ws.contents[modality].values,
                                   folder.contents[modality].values, atol=0.01 * scale)
    assert ws.cache_stats["text"].computed == 80
    result = pipeline.train(config, workspace=ws, progress=False)
    assert result.epochs_run == 2
    steps = prepared.count("train") // config.train.batch_size
    assert len(result.history["loss"]) == 2 and np.isfinite(result.history["loss"]).all()
    assert steps >= 1
    again = pipeline.prepare(config, progress=False)  # the cache now holds every feature
    assert again.cache_stats["image"].computed == 0 and again.cache_stats["image"].reused == 72


RESUMED_STREAM = """
    import sys
    import numpy as np
    import tensorflow as tf
    from tfmmrec import pipeline
    from tfmmrec.config import load_config

    config = load_config(sys.argv[1])
    tf.keras.utils.set_random_seed(config.train.seed)  # as train() does before building data
    data = pipeline.resumable(pipeline.prepare(config, progress=False), epochs=3)
    batches = list(data.dataset(int(sys.argv[2])).take(2))
    np.savez(sys.argv[3], **{f"{key}{i}": b[key].numpy() for i, b in enumerate(batches)
                             for key in ("user_index", "item_index")})
"""


def test_a_resumed_run_reads_the_shards_where_the_interrupted_one_stopped(prepared, tiny_config,
                                                                            tmp_path):
    """The shard stream is a function of train.seed: a new process resuming after epoch 2
    reads the batches this one reads after 2 epochs' steps (before, the resumed run started
    a new stream: its epochs read another order than an uninterrupted run's)."""
    import subprocess
    import sys
    import textwrap

    config = derive_config(tiny_config, tmp_path, f"train.tfrecords={prepared.directory}",
                           "train.batch_size=16")
    config.to_yaml(tmp_path / "config.yaml")
    subprocess.run([sys.executable, "-c", textwrap.dedent(RESUMED_STREAM),
                    str(tmp_path / "config.yaml"), "2", str(tmp_path / "resumed.npz")],
                   check=True, capture_output=True)
    tf.keras.utils.set_random_seed(config.train.seed)
    data = pipeline.resumable(pipeline.prepare(config, progress=False), epochs=3)
    assert data.steps == prepared.count("train") // 16
    stream = list(data.dataset(0).take(2 * data.steps + 2))
    with np.load(tmp_path / "resumed.npz") as resumed:
        for i, batch in enumerate(stream[2 * data.steps:]):
            for key in ("user_index", "item_index"):
                np.testing.assert_array_equal(resumed[f"{key}{i}"], batch[key].numpy())
    assert not np.array_equal(stream[0]["item_index"].numpy(),
                              stream[2 * data.steps]["item_index"].numpy())


def test_training_from_shards_resumed_ends_as_an_uninterrupted_run(prepared, tiny_config,
                                                                   tmp_path):
    """Interrupted after epoch 1 and resumed, a run on prepared shards trains epochs 2-3 on
    the batches (and dropout draws) an uninterrupted run does, to its losses."""
    from tests.training.test_trainer import Interrupt

    shards = [f"train.tfrecords={prepared.directory}", "train.epochs=3"]
    interrupted = derive_config(tiny_config, tmp_path / "interrupted", *shards)
    ws = pipeline.prepare(interrupted, progress=False)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        pipeline.train(interrupted, workspace=ws, callbacks=[Interrupt()], progress=False)
    resumed = pipeline.train(interrupted, workspace=ws, progress=False)
    whole = pipeline.train(derive_config(tiny_config, tmp_path / "whole", *shards),
                           workspace=ws, progress=False)
    assert resumed.epochs_run == 2
    np.testing.assert_allclose(resumed.history["loss"], whole.history["loss"][1:], rtol=1e-5)
