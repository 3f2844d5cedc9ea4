"""The export's TF Serving warmup records replay cleanly: TF Serving refuses a version otherwise."""

from __future__ import annotations

import pytest
import tensorflow as tf

from tests.serving.conftest import MODEL, install_version
from tfmmrec.errors import ServingError
from tfmmrec.export.warmup import read_warmup_requests
from tfmmrec.serving.registry import ServedModel
from tfmmrec.serving.server import ModelServer, ServerOptions


def test_warmup_file_has_a_request_for_every_signature(in_process, tiny_exports):
    path = tiny_exports.brute_force / "assets.extra" / "tf_serving_warmup_requests"
    signatures = {r.model_spec.signature_name for r in read_warmup_requests(path)}
    assert signatures == set(in_process[MODEL].signatures)


@pytest.mark.parametrize("index", ["brute_force", "scann"])
def test_version_with_warmup_replay_becomes_available(tiny_exports, tmp_path, index):
    """Like tensorflow_model_server, a warmup record that fails makes the load fail."""
    install_version(getattr(tiny_exports, index), tmp_path / MODEL, 1)
    options = ServerOptions(port=0, rest_port=None, poll_seconds=0, warmup=True)
    with ModelServer([ServedModel(MODEL, tmp_path / MODEL)], options) as server:
        [(version, record)] = server.registry.status(MODEL)
        assert (version, record.error_message) == (1, "")
        assert server.registry.available_versions(MODEL) == [1]


def test_server_refuses_to_start_when_no_version_loads(tmp_path):
    (tmp_path / MODEL / "1").mkdir(parents=True)  # a version folder without a SavedModel
    options = ServerOptions(port=0, rest_port=None, poll_seconds=0)
    with pytest.raises(ServingError, match=r"'tfmmrec': no version .* could be loaded"):
        ModelServer([ServedModel(MODEL, tmp_path / MODEL)], options).start()


def test_warmup_media_records_are_whole_files(tiny_exports):
    """A WAV of silence ends in NUL bytes, which ``np.array([wav_bytes])`` silently strips
    (numpy's fixed-width bytes dtype); the record must carry the whole file."""
    path = tiny_exports.brute_force / "assets.extra" / "tf_serving_warmup_requests"
    for request in read_warmup_requests(path):
        for alias in ("image", "audio"):
            if alias in request.inputs:
                [content] = tf.make_ndarray(request.inputs[alias])
                decode = tf.audio.decode_wav if alias == "audio" else tf.io.decode_image
                try:
                    decode(content)
                except tf.errors.InvalidArgumentError as error:
                    pytest.fail(f"warmup {alias} record ({len(content)} bytes) does not decode: "
                                f"{error.message.splitlines()[0]} — build the warmup content "
                                "with dtype=object (tfmmrec/export/warmup.py warmup_requests)")
