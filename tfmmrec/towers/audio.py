"""Towers: the audio encoder (16 kHz mono waveforms → clip feature).

YAMNet (through hub.KerasLayer) gives one embedding per 0.48 s frame; the clip feature pools them
over time. A small log-mel CNN is the no-download alternative. Waveforms arrive zero-padded as
``{"waveform": [B, T], "length": [B]}`` so padding never leaks into the pooled feature.
"""

from __future__ import annotations

import tensorflow as tf

from tfmmrec.config import AudioTowerConfig
from tfmmrec.towers.base import Encoder, hub_layer

YAMNET_EMBEDDING_DIM = 1024
MEL_BINS = 64
LOG_MEL_MEAN, LOG_MEL_VARIANCE = -2.0, 4.0  # the small CNN's fixed input normalisation


@tf.keras.utils.register_keras_serializable(package="tfmmrec")
class AudioEncoder(Encoder):
    """``{"waveform": [B, T] float32, "length": [B] int32}`` → ``[B, feature_dim]``.

    Examples:
    >>> encoder = build_audio_encoder(AudioTowerConfig(cnn_filters=[8]))
    >>> encoder({"waveform": tf.zeros([2, 16000]), "length": tf.constant([16000, 8000])}).shape
    TensorShape([2, 8])
    """

    modality = "audio"

    def __init__(self, backbone, feature_dim: int, pooling: str, use_yamnet: bool, description,
                 **kwargs):
        super().__init__(description, **kwargs)
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.pooling = pooling
        self.use_yamnet = use_yamnet

    def call(self, inputs, training=False):
        waveform = tf.cast(inputs["waveform"], tf.float32)
        length = tf.cast(inputs["length"], tf.int32)
        if self.use_yamnet:
            return tf.map_fn(self._embed_clip, (waveform, length),
                             fn_output_signature=tf.TensorSpec([self.feature_dim], tf.float32))
        return self._embed_spectrograms(waveform, length, training)

    def _embed_clip(self, clip):
        """YAMNet takes one 1-D waveform per call; pool its per-frame embeddings."""
        waveform, length = clip
        _, frames, _ = self.backbone(waveform[: tf.maximum(length, 1)])
        return self._pool(frames, axis=0)

    def _embed_spectrograms(self, waveform, length, training):
        waveform *= tf.sequence_mask(length, tf.shape(waveform)[1], waveform.dtype)
        spectrogram = log_mel_spectrogram(waveform)
        # Padding must not reach the pooled feature through the convolutions either: frames past
        # the clip's end read as the normaliser's mean (0 once normalised, what the convs' own
        # zero padding shows an unpadded clip), and the frame count is rounded up to a multiple
        # of the total stride so that every clip's frames line up the same way.
        multiple = 2 ** sum(isinstance(layer, tf.keras.layers.Conv2D)
                            for layer in self.backbone.layers)
        signal_frames = (length + 159) // 160  # STFT frames (hop 160) that start inside the clip
        total = tf.shape(spectrogram)[1]
        rounded = (total + multiple - 1) // multiple * multiple
        spectrogram = tf.pad(spectrogram, [[0, 0], [0, rounded - total], [0, 0]])
        inside = tf.sequence_mask(signal_frames, rounded)[..., None]
        spectrogram = tf.where(inside, spectrogram, LOG_MEL_MEAN)
        frames = self.backbone(spectrogram[..., None], training=training)  # [B, F', M', C]
        frames = tf.reduce_mean(frames, axis=2)  # over mel → [B, F', C]
        valid_frames = (signal_frames + multiple - 1) // multiple
        mask = tf.sequence_mask(tf.maximum(valid_frames, 1), tf.shape(frames)[1], frames.dtype)
        if self.pooling == "max":
            return tf.reduce_max(frames + (mask[..., None] - 1.0) * 1e9, axis=1)
        return tf.reduce_sum(frames * mask[..., None], axis=1) / tf.reduce_sum(
            mask, axis=1, keepdims=True)

    def _pool(self, frames, axis):
        if self.pooling == "max":
            return tf.reduce_max(frames, axis=axis)
        return tf.reduce_mean(frames, axis=axis)


def log_mel_spectrogram(waveform: tf.Tensor) -> tf.Tensor:
    """[B, T] 16 kHz → [B, frames, 64] log-mel, YAMNet's front-end settings (25 ms / 10 ms)."""
    stft = tf.signal.stft(waveform, frame_length=400, frame_step=160, fft_length=512,
                          pad_end=True)
    mel = tf.signal.linear_to_mel_weight_matrix(MEL_BINS, 257, 16000, 125.0, 7500.0)
    return tf.math.log(tf.matmul(tf.abs(stft), mel) + 1e-3)


def build_audio_encoder(config: AudioTowerConfig) -> AudioEncoder:
    description = {"kind": config.backbone, "sample_rate": config.sample_rate,
                   "max_seconds": config.max_seconds, "pooling": config.pooling}
    if config.backbone == "yamnet":
        backbone = hub_layer(config.handle, config.trainable, "audio.handle")
        description["handle"] = config.handle
        encoder = AudioEncoder(backbone, YAMNET_EMBEDDING_DIM, config.pooling, True, description,
                               name="audio_encoder", tower_config=config)
    else:
        init = tf.keras.initializers.HeNormal(seed=config.seed)
        layers = [tf.keras.layers.Conv2D(f, 3, strides=2, padding="same", activation="relu",
                                         kernel_initializer=init) for f in config.cnn_filters]
        backbone = tf.keras.Sequential([tf.keras.Input([None, MEL_BINS, 1]),
                                        tf.keras.layers.Normalization(mean=LOG_MEL_MEAN,
                                                                       variance=LOG_MEL_VARIANCE),
                                        *layers], name="log_mel_cnn")
        description.update(filters=list(config.cnn_filters), frontend=2)  # 2: padding-exact
        encoder = AudioEncoder(backbone, config.cnn_filters[-1], config.pooling, False,
                               description, name="audio_encoder", tower_config=config)
    encoder.set_trainable(config.trainable)
    return encoder
