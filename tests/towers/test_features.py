"""Tests for tfmmrec.towers.features: ``tfmmrec encode`` (local) and reading its features back."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import derive_config
from tfmmrec import cli, pipeline
from tfmmrec.config import load_config
from tfmmrec.data import tfrecords
from tfmmrec.errors import DataError
from tfmmrec.towers import features
from tfmmrec.towers.cache import encode_records

MODALITIES = ("text", "image", "audio")


@pytest.fixture(scope="module")
def encoded(tiny_config, tiny_workspace, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("features") / "tiny")
    features.encode(tiny_config, out, dataset=tiny_workspace.dataset, shards=3, progress=False)
    return out


def read_back(root: str, workspace) -> dict:
    return {m: features.load_features(root, workspace.encoders[m], workspace.dataset)[0]
            for m in workspace.modalities}


def assert_same_features(found: dict, expected: dict, atol: float = 1e-5) -> None:
    for modality in MODALITIES:
        np.testing.assert_array_equal(found[modality].mask, expected[modality].mask)
        np.testing.assert_allclose(found[modality].values, expected[modality].values, atol=atol,
                                   rtol=0)


def test_encode_writes_the_local_caches_features(encoded, tiny_workspace):
    """Every item's feature equals what the folder path + feature cache gives (1e-5)."""
    assert_same_features(read_back(encoded, tiny_workspace), tiny_workspace.contents)
    image = tiny_workspace.encoders["image"]
    directory = Path(encoded) / f"image-{image.identity()}"
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["num_items"] == 80 and manifest["encoded"] == 72
    assert sorted(p.name for p in directory.glob("*.tfrecord")) == [
        f"features-0000{i}-of-00003.tfrecord" for i in range(3)]
    assert not list(directory.glob(".*tmp*"))


def test_training_evaluation_and_export_read_the_features_instead_of_encoding(
        encoded, tiny_config, tiny_workspace, tmp_path):
    config = derive_config(tiny_config, tmp_path, f"train.features={encoded}",
                           f"train.cache_dir={tmp_path / 'empty-cache'}")
    ws = pipeline.prepare(config, progress=False)
    assert_same_features(ws.contents, tiny_workspace.contents)
    assert all(ws.cache_stats[m].computed == 0 for m in MODALITIES)
    assert not (tmp_path / "empty-cache").exists()  # no encoder ran, nothing was cached


def test_features_of_another_encoder_are_refused(encoded, tiny_config, tiny_workspace):
    other = load_config(tiny_config, ["image.cnn_filters=[4]"])
    encoder = features.frozen_encoders(other, tiny_workspace.dataset)["image"]
    with pytest.raises(DataError, match=r"holds no finished image features of this image "
                                        r"encoder .*found: image-.*run `tfmmrec encode`"):
        features.load_features(encoded, encoder, tiny_workspace.dataset)


def test_features_of_another_catalogue_are_refused(encoded, tiny_workspace):
    dataset = tiny_workspace.dataset
    changed = type(dataset)(dataset.root, type(dataset.catalog)(
        dataset.catalog.item_ids, np.array([t + "!" for t in dataset.catalog.texts]),
        dataset.catalog.image_paths, dataset.catalog.audio_paths, dataset.catalog.columns,
        dataset.catalog.frame), dataset.interactions, dataset.users)
    with pytest.raises(DataError, match=r"encoded from another catalogue \(the same \d+ ids, "
                                        r"but other texts or media files; media are compared "
                                        r"by size and modification time"):
        features.load_features(encoded, tiny_workspace.encoders["text"], changed)


def test_features_follow_their_dataset_folder_moved_elsewhere_but_not_an_edited_one(
        encoded, tiny_workspace, tmp_path):
    """A copied folder (new modification times) reads the features it was encoded from; an
    edited text or a replaced image in the copy is refused. At the folder encoded, a file's
    time still counts (the message test above)."""
    import shutil

    from tfmmrec.data.dataset import load_dataset

    moved = tmp_path / "moved"
    shutil.copytree(tiny_workspace.dataset.root, moved, copy_function=shutil.copy)
    config = tiny_workspace.config.data
    dataset = load_dataset(dataclasses.replace(config, path=str(moved)))
    found = read_back(encoded, type(tiny_workspace)(**{
        **{f.name: getattr(tiny_workspace, f.name) for f in dataclasses.fields(tiny_workspace)},
        "dataset": dataset}))
    assert_same_features(found, tiny_workspace.contents)
    image = next(p for p in dataset.catalog.image_paths if p is not None)
    image.write_bytes(image.read_bytes() + b"\0")  # another file, same path
    edited = load_dataset(dataclasses.replace(config, path=str(moved)))
    with pytest.raises(DataError, match=r"other texts or media files than the folder encoded "
                                        r"\(.*\); media are compared by their path"):
        features.load_features(encoded, tiny_workspace.encoders["image"], edited)


def test_features_of_a_catalogue_of_another_size_say_both_counts(encoded, tiny_workspace):
    dataset = tiny_workspace.dataset
    c = dataset.catalog
    fewer = type(dataset)(dataset.root, type(c)(
        c.item_ids[:-1], c.texts[:-1], c.image_paths[:-1], c.audio_paths[:-1], c.columns,
        c.frame.iloc[:-1]), dataset.interactions, dataset.users)
    with pytest.raises(DataError, match=rf"another catalogue \({len(c)} items; the dataset has "
                                        rf"{len(c) - 1}\)"):
        features.load_features(encoded, tiny_workspace.encoders["text"], fewer)


def test_encode_resumes_keeping_finished_shards(tiny_config, tiny_workspace, tmp_path):
    out = tmp_path / "features"
    first = features.encode(tiny_config, out, dataset=tiny_workspace.dataset, shards=3,
                            progress=False)["audio"]
    lost = Path(first.files()[2])
    lost.unlink()
    (Path(first.directory) / "manifest.json").unlink()
    kept = {f: Path(f).stat().st_mtime_ns for f in first.files()[:2]}
    again = features.encode(tiny_config, out, dataset=tiny_workspace.dataset, shards=3,
                            progress=False)["audio"]
    assert {f: Path(f).stat().st_mtime_ns for f in kept} == kept and lost.is_file()
    assert again.encoded == first.encoded
    assert_same_features(read_back(str(out), tiny_workspace), tiny_workspace.contents)


def test_a_damaged_sidecar_is_encoded_again_and_a_damaged_shard_named(tiny_config,
                                                                      tiny_workspace, tmp_path):
    """A damaged sidecar was a JSONDecodeError traceback on every later encode; a truncated
    shard was kept by encode and then a 40-line DataLossError out of training."""
    out = tmp_path / "features"
    first = features.encode(tiny_config, out, dataset=tiny_workspace.dataset, shards=3,
                            progress=False)["audio"]
    sidecar = Path(first.files()[1]).with_suffix(".json")
    sidecar.write_text('{"file": "featu')
    (Path(first.directory) / "manifest.json").unlink()
    again = features.encode(tiny_config, out, dataset=tiny_workspace.dataset, shards=3,
                            progress=False)["audio"]
    assert again.encoded == first.encoded and json.loads(sidecar.read_text())["file"]
    shard = Path(first.files()[2])
    shard.write_bytes(shard.read_bytes()[:-7])
    with pytest.raises(DataError, match=rf"{re.escape(str(shard))}: a feature shard is "
                                        r"damaged \(.*\): delete it and run `tfmmrec encode`"):
        features.load_features(str(out), tiny_workspace.encoders["audio"],
                               tiny_workspace.dataset)


def test_a_failed_rewrite_keeps_finished_features_of_other_settings(tiny_config, tiny_workspace,
                                                                    tmp_path, monkeypatch):
    """Features of another plan (here: another shard count) are rebuilt in ``.replacement``
    and swapped in only when complete: a run that fails half way leaves the finished
    features byte for byte and readable, and the next run finishes the rebuild."""
    out = tmp_path / "features"
    features.encode(tiny_config, out, dataset=tiny_workspace.dataset, shards=3, progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real, calls = features.encode_shard, []

    def failing(job, encode):
        calls.append(job["file"])
        if len(calls) == 2:
            raise RuntimeError("simulated worker crash")
        return real(job, encode)

    monkeypatch.setattr(features, "encode_shard", failing)
    with pytest.raises(RuntimeError, match="simulated worker crash"):
        features.encode(tiny_config, out, dataset=tiny_workspace.dataset, shards=2,
                        progress=False)
    kept = {p: p.read_bytes() for p in out.rglob("*")
            if p.is_file() and tfrecords.REPLACEMENT not in p.parts}
    assert kept == before
    assert_same_features(read_back(str(out), tiny_workspace), tiny_workspace.contents)

    monkeypatch.setattr(features, "encode_shard", real)
    result = features.encode(tiny_config, out, dataset=tiny_workspace.dataset, shards=2,
                             progress=False)["audio"]
    assert len(result.files()) == 2
    assert not list(out.rglob(tfrecords.REPLACEMENT))
    assert_same_features(read_back(str(out), tiny_workspace), tiny_workspace.contents)


def test_encode_from_prepared_tfrecords_matches_the_tfrecords_cache_path(
        tiny_config, tiny_workspace, tmp_path):
    records = tfrecords.write_tfrecords(tiny_config, tmp_path / "records",
                                        dataset=tiny_workspace.dataset, workers=1, shards=2,
                                        progress=False)
    config = load_config(tiny_config, [f"train.tfrecords={records.directory}"])
    features.encode(config, tmp_path / "features", dataset=tiny_workspace.dataset,
                    progress=False)
    expected = {m: encode_records(records.directory, tiny_workspace.encoders[m], None,
                                         progress=False)[0] for m in MODALITIES}
    assert_same_features(read_back(str(tmp_path / "features"), tiny_workspace), expected)


def test_any_tensorflow_filesystem_works(tiny_config, tiny_workspace):
    root = "ram://tfmmrec-features/out"
    features.encode(load_config(tiny_config, ["text.enabled=false", "audio.enabled=false"]),
                    root, dataset=tiny_workspace.dataset, progress=False)
    image = features.load_features(root, tiny_workspace.encoders["image"],
                                   tiny_workspace.dataset)[0]
    np.testing.assert_allclose(image.values, tiny_workspace.contents["image"].values,
                               atol=1e-5, rtol=0)


def test_cli_encode_then_train_from_the_features(tiny_config, tiny_workspace, tmp_path, capsys):
    config = derive_config(tiny_config, tmp_path)
    config.to_yaml(tmp_path / "config.yaml")
    out = tmp_path / "features"
    assert cli.main(["-q", "encode", "--config", str(tmp_path / "config.yaml"), "--output",
                     str(out)]) == 0
    printed = capsys.readouterr().out
    assert "image: 72 of 80 items" in printed and f"train.features={out}" in printed
    assert cli.main(["-q", "train", "--config", str(tmp_path / "config.yaml"), "--set",
                     f"train.features={out}"]) == 0


def test_beam_options_without_runner_are_a_usage_error(tiny_config, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["encode", "--output", str(tmp_path), "--temp_location=/tmp/x"])
    assert exit_info.value.code == 2
    assert "Beam pipeline options need --runner" in capsys.readouterr().err


def test_local_encode_runs_one_traced_graph_with_the_caches_features(tiny_config,
                                                                     tiny_workspace, tmp_path,
                                                                     monkeypatch):
    """Batches of 8 (ten per encoder): the encoder runs as the cache's compiled graph, and the
    features still equal the cache's."""
    from tfmmrec.towers import cache

    sizes = []

    def spy(encoder, num_batches):
        sizes.append(num_batches)
        return cache.compiled(encoder, num_batches)

    monkeypatch.setattr(features, "compiled", spy)
    config = load_config(tiny_config, ["train.encode_batch_size=8"])
    out = str(tmp_path / "features")
    features.encode(config, out, shards=2, progress=False)  # streams the folder's table
    assert sizes == [10, 10, 10] and min(sizes) >= cache.COMPILE_MIN_BATCHES
    assert_same_features(read_back(out, tiny_workspace), tiny_workspace.contents)


TEXT_ONLY = ("image.enabled=false", "audio.enabled=false")


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``directory``: its bytes and modification time (rewritten or not)."""
    return {str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_resumed_encode_rewrites_a_shard_damaged_since_its_summary(tiny_config,
                                                                     tiny_workspace, tmp_path):
    """The summary records each shard's size and SHA-256 (``prepare``'s check): a shard cut
    short or bit-flipped since is encoded again, the intact one is kept."""
    out = tmp_path / "features"
    first = features.encode(tiny_config, out, dataset=tiny_workspace.dataset, shards=3,
                            progress=False)["audio"]
    cut, flipped, intact = (Path(f) for f in first.files())
    cut.write_bytes(cut.read_bytes()[:-7])
    data = bytearray(flipped.read_bytes())
    data[-3] ^= 0x40  # the same size, another feature byte
    flipped.write_bytes(bytes(data))
    kept = intact.stat().st_mtime_ns
    again = features.encode(tiny_config, out, dataset=tiny_workspace.dataset, shards=3,
                            progress=False)["audio"]
    assert_same_features(read_back(str(out), tiny_workspace), tiny_workspace.contents)
    assert intact.stat().st_mtime_ns == kept and again.encoded == first.encoded
    assert [s["sha256"] for s in again.shards] == [s["sha256"] for s in first.shards]


def test_a_retried_shard_job_records_the_shard_that_stands(tiny_config, tiny_workspace,
                                                           tmp_path):
    """A runner that ran a job twice may leave one attempt's summary beside the other
    attempt's shard (the same size, other float rounding): the manifest records the shard
    that stands, so the next encode keeps it instead of calling it damaged."""
    import hashlib
    import shutil

    config = load_config(tiny_config, list(TEXT_ONLY))
    encoder = features.frozen_encoders(config, tiny_workspace.dataset)["text"]
    run = features.plan_encode(config, tiny_workspace.dataset, encoder, str(tmp_path / "f"),
                               shards=2)
    jobs = list(run.todo_jobs())

    def encode(raw, shift=0.0):
        return np.asarray(encoder(raw, training=False)) + shift

    summaries = [features.encode_shard(job, encode) for job in jobs]
    retry = tmp_path / "other-attempt"
    retry.mkdir()
    features.encode_shard({**jobs[0], "output": str(retry)}, lambda raw: encode(raw, 1e-3))
    shutil.copy(retry / jobs[0]["file"], Path(run.workdir) / jobs[0]["file"])  # its rename won
    manifest = features.finish_encode(run, summaries, retried=True)  # as the Beam job does
    standing = Path(manifest.directory) / jobs[0]["file"]
    assert manifest.shards[0]["sha256"] == hashlib.sha256(standing.read_bytes()).hexdigest()
    again = features.plan_encode(config, tiny_workspace.dataset, encoder, str(tmp_path / "f"),
                                 shards=2)
    assert again.todo == []


def test_an_unfinished_features_folder_says_its_encode_did_not_finish(tiny_config,
                                                                      tiny_workspace, tmp_path):
    config = load_config(tiny_config, list(TEXT_ONLY))
    out = tmp_path / "features"
    manifest = features.encode(config, out, dataset=tiny_workspace.dataset, progress=False)
    (Path(manifest["text"].directory) / "manifest.json").unlink()
    with pytest.raises(DataError, match=rf"{re.escape(manifest['text'].directory)} exists, "
                                        r"but its `tfmmrec encode` did not finish .*: run "
                                        rf"`tfmmrec encode` with this config \(--output "
                                        rf"{re.escape(str(out))}\) to finish it") as error:
        features.load_features(str(out), tiny_workspace.encoders["text"],
                               tiny_workspace.dataset)
    assert "found" not in str(error.value)


@pytest.mark.parametrize("operation, done", [("rename", 0), ("rename", 1), ("rename", 4),
                                              ("remove", 1), ("remove", 3)])
def test_a_swap_interrupted_after_the_old_manifest_went_is_resumed(
        tiny_config, tiny_workspace, tmp_path, monkeypatch, operation, done):
    """The replacement (here of a 3-shard output by 2 shards) is kept when ``swap_in`` stops
    once the old manifest is gone: after ``done`` of its files were moved in (``rename``), or
    while the old files were being removed with the old plan still there (``remove``). The
    next run encodes nothing and ends as an uninterrupted run did."""
    config = load_config(tiny_config, list(TEXT_ONLY))
    expected_dir, out = tmp_path / "expected", tmp_path / "features"
    features.encode(config, expected_dir, dataset=tiny_workspace.dataset, shards=2,
                    progress=False)
    features.encode(config, out, dataset=tiny_workspace.dataset, shards=3, progress=False)
    real, calls = getattr(tf.io.gfile, operation), []

    def interrupted(*args, **kwargs):
        if len(calls) == done:
            raise OSError("killed during the swap")
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(tf.io.gfile, operation, interrupted)
    with pytest.raises(OSError, match="killed during the swap"):
        features.encode(config, out, dataset=tiny_workspace.dataset, shards=2, progress=False)
    monkeypatch.undo()
    encoded = []
    real = features.encode_shard
    monkeypatch.setattr(features, "encode_shard",
                        lambda job, encode: encoded.append(job["file"]) or real(job, encode))
    again = features.encode(config, out, dataset=tiny_workspace.dataset, shards=2,
                            progress=False)["text"]
    assert encoded == [] and len(again.files()) == 2
    name = Path(again.directory).name
    assert {k: v[0] for k, v in snapshot(out / name).items()} == {
        k: v[0] for k, v in snapshot(expected_dir / name).items()}
    found = features.load_features(str(out), tiny_workspace.encoders["text"],
                                   tiny_workspace.dataset)[0]
    np.testing.assert_allclose(found.values, tiny_workspace.contents["text"].values, atol=1e-5,
                               rtol=0)


def test_encode_from_prepared_shards_counts_the_files_that_did_not_decode(tiny_config,
                                                                          tmp_path):
    """``tfmmrec encode`` from ``prepare``'s shards recorded ``failed: 0`` (and said nothing)
    where the folder path records the undecodable file."""
    from tests.data.folders import summary_folder
    from tfmmrec.data.dataset import load_dataset

    root = summary_folder(tmp_path / "d")
    config = load_config(tiny_config, [f"data.path={root}", "data.split=random",
                                       "text.enabled=false"])
    dataset = load_dataset(config.data)
    records = tfrecords.write_tfrecords(config, tmp_path / "records", dataset=dataset,
                                        workers=1, shards=2, progress=False)
    folder = features.encode(config, tmp_path / "folder", dataset=dataset, progress=False)
    shards = features.encode(load_config(config, [f"train.tfrecords={records.directory}"]),
                             tmp_path / "shards", dataset=dataset, progress=False)
    assert (shards["image"].encoded, shards["image"].failed) == (
        folder["image"].encoded, folder["image"].failed) == (5, 1)
