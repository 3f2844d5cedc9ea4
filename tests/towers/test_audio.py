"""Tests for tfmmrec.towers.audio: log-mel CNN and YAMNet encoders over padded waveform batches."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import shared_path
from tests.towers import tower_checks
from tfmmrec.config import AudioTowerConfig
from tfmmrec.data.media import load_audio
from tfmmrec.towers.audio import YAMNET_EMBEDDING_DIM, AudioEncoder, build_audio_encoder
from tfmmrec.towers.cache import pad_waveforms

RNG = np.random.default_rng(0)
CLIPS = [RNG.uniform(-0.5, 0.5, n).astype(np.float32) for n in (12000, 7001, 16000)]
BATCH = pad_waveforms(CLIPS)
AUDIO_SPEC = {"waveform": tf.TensorSpec([None, None], tf.float32),
              "length": tf.TensorSpec([None], tf.int32)}


def small(**kwargs) -> AudioEncoder:
    return build_audio_encoder(AudioTowerConfig(cnn_filters=[4, 8], **kwargs))


def one(clip: np.ndarray, padding: int = 0, fill: float = 0.0) -> dict[str, np.ndarray]:
    waveform = np.concatenate([clip, np.full(padding, fill, np.float32)])
    return {"waveform": waveform[None], "length": np.array([len(clip)], np.int32)}


def test_small_cnn_standard_checks(tmp_path):
    encoder = small()
    tower_checks.check_tower(encoder, [BATCH], (3, 8), [AUDIO_SPEC], tmp_path / "saved")
    assert encoder.feature_dim == 8 and encoder.modality == "audio"


def test_small_cnn_frozen_weights_stay_frozen():
    tower_checks.check_frozen(small(trainable=False), [BATCH])


def test_small_cnn_trainable_weights_change():
    tower_checks.check_trainable(small(trainable=True), [BATCH])


@pytest.mark.parametrize("pooling", ["mean", "max"])
@pytest.mark.parametrize("padding", [1, 160, 9000])
def test_small_cnn_padding_gives_the_unpadded_feature(pooling, padding):
    encoder = small(pooling=pooling)
    clip = CLIPS[1]
    np.testing.assert_allclose(encoder(one(clip, padding)).numpy(), encoder(one(clip)).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_samples_past_length_are_ignored_whatever_they_hold():
    encoder = small()
    clip = CLIPS[0]
    noisy = encoder(one(clip, 4000, fill=0.9)).numpy()
    np.testing.assert_allclose(noisy, encoder(one(clip)).numpy(), rtol=1e-5, atol=1e-6)


def test_batched_clip_gets_the_feature_it_gets_alone():
    encoder = small()
    batched = encoder(BATCH).numpy()
    for row, clip in enumerate(CLIPS):
        np.testing.assert_allclose(batched[row], encoder(one(clip)).numpy()[0], rtol=1e-5,
                                   atol=1e-6)


def test_small_cnn_is_seeded_so_identity_is_stable():
    assert small().identity() == small().identity()
    assert small(pooling="max").identity() != small().identity()


# --- pretrained YAMNet from ../shared ---------------------------------------------------------


@pytest.fixture(scope="module")
def yamnet() -> AudioEncoder:
    handle = shared_path("weights", "yamnet")
    return build_audio_encoder(AudioTowerConfig(backbone="yamnet", handle=str(handle)))


@pytest.mark.needs_shared
def test_yamnet_feature_is_1024_dim_and_frozen(yamnet):
    assert yamnet.feature_dim == YAMNET_EMBEDDING_DIM == 1024
    tower_checks.check_output(yamnet, [BATCH], (3, 1024))
    assert yamnet.trainable_weights == []


@pytest.mark.needs_shared
def test_yamnet_padded_clips_give_the_unpadded_feature(yamnet):
    batched = yamnet(BATCH).numpy()
    for row, clip in enumerate(CLIPS):
        alone = yamnet(one(clip)).numpy()[0]
        np.testing.assert_allclose(batched[row], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.needs_shared
def test_yamnet_tells_real_clips_apart(yamnet, audio_samples_dir):
    names = ["librosa_trumpet_sorohanro06.ogg", "librosa_librispeech_198-209-0000_first10s.flac",
             "pygame_house_lo.wav", "pygame_house_lo.ogg"]
    clips = [load_audio(audio_samples_dir / name, max_seconds=3.0) for name in names]
    features = yamnet(pad_waveforms(clips)).numpy()
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    similarity = features @ features.T
    # The same recording in two formats is closer than a trumpet is to speech.
    assert similarity[2, 3] > 0.95
    assert similarity[2, 3] > similarity[0, 1] + 0.1
