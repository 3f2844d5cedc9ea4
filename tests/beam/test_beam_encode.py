"""Tests for tfmmrec.beam.encode and the Beam CLI: the same features as the local cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("apache_beam")

from tests.conftest import derive_config
from tfmmrec import cli
from tfmmrec.beam import encode as beam_encode
from tfmmrec.config import load_config
from tfmmrec.data import tfrecords
from tfmmrec.towers import features
from tfmmrec.towers.cache import encode_records

TWO_WORKERS = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")
MODALITIES = ("text", "image", "audio")


def assert_same_features(root: str, workspace, expected: dict) -> None:
    for modality in MODALITIES:
        found, _ = features.load_features(root, workspace.encoders[modality], workspace.dataset)
        np.testing.assert_array_equal(found.mask, expected[modality].mask)
        np.testing.assert_allclose(found.values, expected[modality].values, atol=1e-5, rtol=0)


def test_beam_encode_from_the_folder_equals_the_local_cache(tiny_config, tiny_workspace,
                                                            tmp_path):
    """Two worker processes, each loading the three encoders once from their SavedModels."""
    out = tmp_path / "features"
    manifests = beam_encode.encode(tiny_config, out, runner="FnApiRunner",
                                   beam_args=TWO_WORKERS, dataset=tiny_workspace.dataset,
                                   shards=4)
    assert {m: manifests[m].encoded for m in MODALITIES} == {
        m: int(tiny_workspace.contents[m].mask.sum()) for m in MODALITIES}
    assert_same_features(str(out), tiny_workspace, tiny_workspace.contents)
    leftovers = [p.name for p in out.rglob(".*")]
    assert leftovers == []  # staged jobs and the saved encoders are removed


def test_the_driver_streams_the_items_table_and_never_loads_it_whole(
        tiny_config, tiny_workspace, tmp_path, monkeypatch):
    """Without a loaded dataset the driver reads the table in chunks (here 7 rows) and stages
    one shard's job at a time: loading the whole table or interactions fails the test, and
    the features still equal the local cache's."""
    from tfmmrec.data import dataset, stream, validate

    def whole_table(*args, **kwargs):
        raise AssertionError("the Beam driver loaded a whole table")

    monkeypatch.setattr(validate, "read_table", whole_table)
    monkeypatch.setattr(dataset, "load_dataset", whole_table)
    monkeypatch.setattr(stream, "CHUNK_ROWS", 7)
    out = tmp_path / "features"
    manifests = beam_encode.encode(tiny_config, out, runner="FnApiRunner", workers=1, shards=5)
    assert {m: manifests[m].encoded for m in MODALITIES} == {
        m: int(tiny_workspace.contents[m].mask.sum()) for m in MODALITIES}
    assert_same_features(str(out), tiny_workspace, tiny_workspace.contents)


@pytest.mark.slow
def test_cli_beam_prepare_then_beam_encode_from_the_shards(tiny_config, tiny_workspace,
                                                           tmp_path, capsys):
    """``prepare --runner`` then ``encode --runner`` reading the pre-decoded item shards: the
    features equal ``encode_records`` (the local cache's TFRecord path)."""
    config = derive_config(tiny_config, tmp_path)
    config.to_yaml(tmp_path / "config.yaml")
    records, out = tmp_path / "records", tmp_path / "features"
    assert cli.main(["-q", "prepare", "--config", str(tmp_path / "config.yaml"), "--output",
                     str(records), "--shards", "2", "--runner", "DirectRunner",
                     *TWO_WORKERS]) == 0
    assert cli.main(["-q", "encode", "--config", str(tmp_path / "config.yaml"), "--set",
                     f"train.tfrecords={records}", "--output", str(out), "--runner",
                     "DirectRunner", "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    audio = int(tiny_workspace.contents["audio"].mask.sum())
    assert f"audio: {audio} of 80 items" in printed and f"train.features={out}" in printed
    expected = {m: encode_records(str(records), tiny_workspace.encoders[m], None,
                                         progress=False)[0] for m in MODALITIES}
    assert_same_features(str(out), tiny_workspace, expected)
    text = tiny_workspace.encoders["text"]
    manifest = json.loads((out / f"text-{text.identity()}" / "manifest.json").read_text())
    assert manifest["source"] == str(records) and len(manifest["shards"]) == 2


def test_a_failed_pipeline_keeps_finished_shards_and_says_to_rerun(tiny_config, tiny_workspace,
                                                                   tmp_path, monkeypatch):
    out = tmp_path / "records"
    real = tfrecords.write_shard

    def fail_on_test_shards(job):
        if job["table"] == "test":
            raise OSError("disk went away")
        return real(job)

    monkeypatch.setattr(tfrecords, "write_shard", fail_on_test_shards)
    from tfmmrec.beam import prepare as beam_prepare
    from tfmmrec.errors import DataError

    with pytest.raises(DataError, match=r"Beam pipeline \(prepare\) failed.*run the same "
                                        "command again"):
        beam_prepare.prepare(load_config(tiny_config, []), out, runner="FnApiRunner",
                             dataset=tiny_workspace.dataset, workers=1, shards=2)
    assert len(list(out.glob("items-*.tfrecord"))) == 2
    assert not (out / "manifest.json").exists()


def test_switching_between_local_and_beam_encode_keeps_the_finished_shards(
        tiny_config, tiny_workspace, tmp_path):
    """The default shard count follows the workers (1 locally, the cores under --runner), which
    is not content: the same catalogue and encoder encoded by one are finished for the other,
    whatever --workers says, and nothing is rewritten."""
    config = load_config(tiny_config, ["image.enabled=false", "audio.enabled=false"])
    out = tmp_path / "features"
    local = features.encode(config, out, dataset=tiny_workspace.dataset, progress=False)["text"]

    def snapshot():  # every file's bytes, and whether a shard was written again
        return {p: (p.read_bytes(), p.suffix == ".tfrecord" and p.stat().st_mtime_ns)
                for p in out.rglob("*") if p.is_file()}

    before = snapshot()
    for workers in (2, 3):
        beam = beam_encode.encode(config, out, runner="FnApiRunner", workers=workers,
                                  beam_args=("--direct_num_workers=1",),
                                  dataset=tiny_workspace.dataset)["text"]
        assert snapshot() == before and beam.shards == local.shards
    assert features.plan_encode(config, tiny_workspace.dataset,
                                tiny_workspace.encoders["text"], str(out), workers=4).todo == []
