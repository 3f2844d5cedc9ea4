"""Tests for tfmmrec.data.tfrecords: prepare (folder → shards), resume, readers, training."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tests.conftest import REPO, derive_config
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


@pytest.mark.parametrize("state", ["manifest.json", "plan.json"])
def test_a_damaged_manifest_or_plan_is_one_line_and_prepare_writes_it_again(
        prepared, tiny_config, tiny_workspace, tmp_path, state):
    """Both were a JSONDecodeError traceback, and prepare (the fix a user is told to run)
    failed with the same traceback, so the folder stayed unusable until deleted by hand."""
    out = tmp_path / "copy"
    shutil.copytree(prepared.directory, out)
    (out / state).write_text('{"version": 2, "num_items": ')
    if state == "manifest.json":
        with pytest.raises(DataError, match=r"manifest\.json is damaged, not valid JSON "
                                            r"\(.*\): run `tfmmrec prepare` again"):
            tfrecords.load_manifest(out)
    again = tfrecords.write_tfrecords(tiny_config, out, dataset=tiny_workspace.dataset,
                                      workers=1, shards=3, progress=False)
    assert again.shards == prepared.shards
    assert tfrecords.load_manifest(out).shards == prepared.shards


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


# --- stale or damaged shards: refused in one line, rewritten by the next prepare -------------


@pytest.fixture
def own_folder(tiny_config, tiny_demo_dir, tmp_path):
    """A config over a private copy of the tiny demo folder (tests change its tables)."""
    data = tmp_path / "data"
    shutil.copytree(tiny_demo_dir, data)
    config = derive_config(tiny_config, tmp_path, f"data.path={data}")
    config.to_yaml(tmp_path / "config.yaml")
    return config, data, tmp_path / "config.yaml"


def cli_error(capsys, *argv: str) -> str:
    """The one line a failed command prints (asserted: one line, exit status 2)."""
    code = cli.main(["-q", *argv])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USER_ERROR and re.fullmatch(r"error: [^\n]*\n", err), err
    return err


def test_training_refuses_shards_of_interactions_appended_since_prepare(own_folder, capsys):
    """The shards would train on the old rows while the new split's test rows sit in them."""
    config, data, path = own_folder
    out = path.parent / "records"
    tfrecords.write_tfrecords(config, out, workers=1, shards=2, progress=False)
    table = data / "interactions.csv"
    rows = table.read_text().splitlines()
    seen = {tuple(r.split(",")[:2]) for r in rows[1:]}
    new = [f"u000,{i},5,1700000000" for i in (f"i{n:04d}" for n in range(80))
           if ("u000", i) not in seen][:20]
    table.write_text("\n".join([*rows, *new]) + "\n")
    err = cli_error(capsys, "train", "--config", str(path), "--set", f"train.tfrecords={out}")
    assert re.match(rf"error: train.tfrecords={re.escape(str(out))}: interactions changed "
                    r"since `tfmmrec prepare` \(train: \d+ rows prepared, \d+ now.*\): run it "
                    r"again", err), err


def test_shards_of_items_edited_since_prepare_are_refused_by_train_and_encode(own_folder,
                                                                             capsys):
    """Only the ids were compared: an edited title trained (and was encoded by `encode`, whose
    features then carried the folder's new fingerprint) as it was when prepared."""
    config, data, path = own_folder
    out = path.parent / "records"
    tfrecords.write_tfrecords(config, out, workers=1, shards=2, progress=False)
    items = data / "items.csv"
    frame = pd.read_csv(items, dtype=str, keep_default_na=False)
    frame.loc[5, "title"] = "Completely New Title"
    frame.to_csv(items, index=False)
    for command in (["train", "--config", str(path), "--set", f"train.tfrecords={out}"],
                    ["encode", "--config", str(path), "--set", f"train.tfrecords={out}",
                     "--output", str(path.parent / "features")]):
        err = cli_error(capsys, *command)
        assert "items: their texts or media files changed since they were prepared" in err, err


def test_shards_still_match_their_items_copied_to_another_folder(prepared, tiny_config,
                                                                 tiny_demo_dir, tmp_path):
    """The items' content is compared wherever the folder lies: a copy (new paths, new
    modification times) is the same catalogue."""
    from tfmmrec.data.dataset import load_dataset

    copy = tmp_path / "copy"
    shutil.copytree(tiny_demo_dir, copy, copy_function=shutil.copy)
    config = load_config(tiny_config, [f"data.path={copy}"])
    tfrecords.check_compatible(prepared, config, load_dataset(config))


def test_interactions_of_the_same_count_but_other_rows_are_refused(prepared, tiny_config,
                                                                   tiny_workspace):
    dataset = tiny_workspace.dataset
    tfrecords.check_compatible(prepared, tiny_config, dataset)  # unchanged: accepted
    ratings = dataset.interactions.assign(rating=dataset.interactions["rating"] % 5 + 1)
    with pytest.raises(DataError, match=r"interactions changed since `tfmmrec prepare` \(train:"
                                        r" (\d+) rows prepared, \1 now \(other rows\)"):
        tfrecords.check_compatible(prepared, tiny_config,
                                   dataclasses.replace(dataset, interactions=ratings))


def damage(path: Path, how: str) -> None:
    """Truncate the file mid-record, or flip one bit in its middle (same size)."""
    content = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(content[: len(content) * 2 // 3]))
    else:
        content[len(content) // 2] ^= 0x10
        path.write_bytes(bytes(content))


@pytest.mark.parametrize(("table", "how", "says"), [
    ("train", "truncate", r"train-00000-of-00003.tfrecord: \d+ bytes, but manifest.json "
                          r"records \d+: the shard was truncated or changed"),
    ("items", "flip", r"items-00001-of-00003.tfrecord: its SHA-256 is not the one manifest.json "
                      r"records: the shard was damaged"),
])
def test_training_refuses_a_damaged_shard_in_one_line(prepared, tiny_config, tmp_path, capsys,
                                                      table, how, says):
    copy = tmp_path / "copy"
    shutil.copytree(prepared.directory, copy)
    damage(copy / f"{table}-0000{1 if table == 'items' else 0}-of-00003.tfrecord", how)
    config = derive_config(tiny_config, tmp_path, f"train.tfrecords={copy}")
    config.to_yaml(tmp_path / "config.yaml")
    err = cli_error(capsys, "train", "--config", str(tmp_path / "config.yaml"))
    assert re.match(f"error: {re.escape(str(copy))}/{says}.*run it again \\(it rewrites "
                    "damaged shards\\)", err), err


@pytest.mark.parametrize("manifest", ["kept", "lost"])
def test_prepare_rewrites_damaged_shards_and_keeps_the_rest(prepared, tiny_config,
                                                            tiny_workspace, tmp_path, manifest):
    """Damaged shards are found by their recorded checksums or, with the manifest that
    recorded them lost, by their records' own CRCs and counts."""
    out = tmp_path / "copy"
    shutil.copytree(prepared.directory, out)
    damaged = {out / "items-00001-of-00003.tfrecord": "flip",
               out / "test-00002-of-00003.tfrecord": "truncate"}
    original = {path: path.read_bytes() for path in damaged}
    for path, how in damaged.items():
        damage(path, how)
    if manifest == "lost":
        (out / "manifest.json").unlink()
    kept = {p: p.stat().st_mtime_ns for p in out.glob("*.tfrecord") if p not in damaged}
    again = tfrecords.write_tfrecords(tiny_config, out, dataset=tiny_workspace.dataset,
                                      workers=1, shards=3, progress=False)
    assert {path: path.read_bytes() for path in damaged} == original
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert again.shards == prepared.shards
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no sidecars left
    tfrecords.check_compatible(tfrecords.load_manifest(out), tiny_config,
                               tiny_workspace.dataset)


def test_the_manifest_records_each_shards_size_and_checksum(prepared):
    for table in tfrecords.TABLES:
        for path, shard in zip(prepared.files(table), prepared.shards[table], strict=True):
            assert tfrecords.file_digest(path) == (shard["bytes"], shard["sha256"])


# --- kill -9 of the driver: no worker left behind --------------------------------------------

KILL_POOL_DRIVER = """
    import multiprocessing, os, signal, sys, threading, time
    import tfmmrec  # noqa: F401
    from tfmmrec.config import load_config
    from tfmmrec.data import tfrecords

    out, pids = sys.argv[2], sys.argv[3]

    def kill_once_a_shard_is_written():  # the pool's workers are busy or idle, not yet done
        while True:
            workers = [p.pid for p in multiprocessing.active_children()]
            if len(workers) == 2 and any(n.endswith(".tfrecord") for n in os.listdir(out)):
                with open(pids, "w") as handle:
                    handle.write(" ".join(map(str, workers)))
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.02)

    os.makedirs(out)
    threading.Thread(target=kill_once_a_shard_is_written, daemon=True).start()
    tfrecords.write_tfrecords(load_config(sys.argv[1]), out, workers=2, shards=3,
                              progress=False)
"""


def running(pid: int) -> bool:
    """A live process (a zombie no one reaped is gone: it holds no memory)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_pool_workers_exit_when_the_driver_is_killed(tiny_config, tmp_path):
    tiny_config.to_yaml(tmp_path / "config.yaml")
    pids = tmp_path / "pids"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(tmp_path / "driver.log", "wb") as log:  # not a pipe: workers inherit it
        driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILL_POOL_DRIVER),
                                   str(tmp_path / "config.yaml"), str(tmp_path / "records"),
                                   str(pids)], env=env, cwd=REPO, stdout=log, stderr=log)
    assert driver.wait(timeout=300) == -signal.SIGKILL, (tmp_path / "driver.log").read_text()
    workers = [int(pid) for pid in pids.read_text().split()]
    try:
        deadline = time.monotonic() + 20
        while any(map(running, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if running(pid)], "workers outlived the driver"
    finally:
        for pid in workers:  # this test's own leftovers, if the check failed
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_shard_damaged_after_the_checks_is_one_line_while_training(prepared, tiny_config,
                                                                     tmp_path, capsys,
                                                                     monkeypatch):
    """A train shard that changes after the up-front checks (here: checks skipped, one bit
    flipped) fails in TensorFlow's reader mid-run: one line naming train.tfrecords."""
    copy = tmp_path / "copy"
    shutil.copytree(prepared.directory, copy)
    damage(copy / "train-00000-of-00003.tfrecord", "flip")
    monkeypatch.setattr(tfrecords, "verify_checksums", lambda *args, **kwargs: None)
    config = derive_config(tiny_config, tmp_path, f"train.tfrecords={copy}")
    config.to_yaml(tmp_path / "config.yaml")
    err = cli_error(capsys, "train", "--config", str(tmp_path / "config.yaml"))
    assert err.startswith(f"error: train.tfrecords={copy}: a shard could not be read while "
                          "training ("), err
    assert "run `tfmmrec prepare` again" in err
