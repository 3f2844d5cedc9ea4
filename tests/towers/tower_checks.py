"""The checks every tower gets, so each test file states only what is special about its tower.

Like KerasHub's shared layer test base: output shape and dtype, frozen weights stay frozen
(trainable and non-trainable, e.g. BatchNorm statistics) through real optimiser steps, trainable
weights do move, ``from_config(get_config())`` with the same weights reproduces the outputs
(every tower: encoders, projection, fusion, history encoder, item and query towers), and a
SavedModel round trip reproduces the outputs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf


def call(layer, inputs: Sequence, training: bool = False):
    return layer(*inputs, training=training)


def check_output(layer, inputs: Sequence, shape: tuple[int, ...]) -> np.ndarray:
    """Output has ``shape``, is float32 and finite, and is deterministic at inference."""
    first = call(layer, inputs)
    assert tuple(first.shape) == shape
    assert first.dtype == tf.float32
    out = first.numpy()
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(call(layer, inputs).numpy(), out)
    return out


def check_unit_norm(out: np.ndarray) -> None:
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)


def snapshot(weights) -> list[np.ndarray]:
    return [np.array(w.numpy(), copy=True) for w in weights]


def train_steps(layer, inputs: Sequence, steps: int = 2, learning_rate: float = 0.5) -> None:
    """Real optimiser steps on a regression head over ``layer``, in training mode."""
    head = tf.keras.layers.Dense(1)
    optimizer = tf.keras.optimizers.SGD(learning_rate)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            out = call(layer, inputs, training=True)
            loss = tf.reduce_mean(tf.square(head(out) - 1.0))
        variables = list(layer.trainable_weights) + list(head.trainable_weights)
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(
            [(g, v) for g, v in zip(grads, variables, strict=True) if g is not None])


def check_frozen(layer, inputs: Sequence) -> None:
    """No trainable weights, and training steps change none of its weights (incl. BN stats)."""
    assert layer.weights, "nothing to freeze"
    assert layer.trainable_weights == []
    before = snapshot(layer.weights)
    train_steps(layer, inputs)
    for weight, old in zip(layer.weights, before, strict=True):
        np.testing.assert_array_equal(weight.numpy(), old, err_msg=weight.name)


def check_trainable(layer, inputs: Sequence) -> None:
    """Trainable weights exist and training steps move them."""
    assert layer.trainable_weights
    before = snapshot(layer.trainable_weights)
    train_steps(layer, inputs)
    moved = [not np.array_equal(w.numpy(), old)
             for w, old in zip(layer.trainable_weights, before, strict=True)]
    assert sum(moved) >= len(moved) // 2, f"only {sum(moved)}/{len(moved)} weights moved"


def check_savedmodel_round_trip(layer, inputs: Sequence, specs: Sequence, directory: Path,
                                atol: float = 1e-5) -> None:
    """Saved behind a ``tf.function`` signature and reloaded, the layer gives the same output."""
    module = tf.Module()
    module.layer = layer
    module.serve = tf.function(lambda *args: layer(*args, training=False),
                               input_signature=list(specs))
    options = tf.saved_model.SaveOptions(namespace_whitelist=["TFText"])
    tf.saved_model.save(module, str(directory), options=options)
    loaded = tf.saved_model.load(str(directory))
    np.testing.assert_allclose(loaded.serve(*inputs).numpy(), call(layer, inputs).numpy(),
                               atol=atol)


def check_config_round_trip(layer, inputs: Sequence, atol: float = 1e-6) -> None:
    """KerasHub's serialization check: ``get_config`` is plain JSON, ``from_config`` rebuilds a
    layer with the same config, and given the original's weights it computes the same output."""
    call(layer, inputs)  # built, so its weights can be compared
    config = layer.get_config()
    assert json.loads(json.dumps(config)) == config, "get_config must be JSON-serialisable"
    clone = type(layer).from_config(config)
    assert type(clone) is type(layer)
    assert clone.get_config() == config
    call(clone, inputs)  # builds its weights
    assert [w.shape for w in clone.weights] == [w.shape for w in layer.weights]
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(call(clone, inputs).numpy(), call(layer, inputs).numpy(),
                               atol=atol)
    assert clone.trainable == layer.trainable
    assert len(clone.trainable_weights) == len(layer.trainable_weights)


def check_tower(layer, inputs: Sequence, shape: tuple[int, ...], specs: Sequence,
                directory: Path) -> np.ndarray:
    """The standard checks for any tower: output contract, ``get_config`` round trip and
    SavedModel round trip."""
    out = check_output(layer, inputs, shape)
    check_config_round_trip(layer, inputs)
    check_savedmodel_round_trip(layer, inputs, specs, directory)
    return out


def check_keras_serialization(layer) -> None:
    """``tf.keras.layers.deserialize(serialize(layer))`` without ``custom_objects`` (the layer
    class is registered as Keras-serializable) gives a layer of the same class and config: what
    loading a ``.keras`` file of a functional model holding it does."""
    config = layer.get_config()
    clone = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
    assert type(clone) is type(layer)
    assert json.loads(json.dumps(clone.get_config())) == json.loads(json.dumps(config))
