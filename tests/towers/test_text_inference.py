"""Tests for tfmmrec.towers.text_inference: the fused inference copy of the BERT backbone."""

from __future__ import annotations

import keras_nlp
import numpy as np
import pytest
import tensorflow as tf

from tests.towers.test_text import CORPUS, MIXED, STRINGS, padded_twin, tiny
from tfmmrec.config import ExportConfig
from tfmmrec.errors import ConfigError
from tfmmrec.towers.text import build_text_encoder
from tfmmrec.towers.text_inference import (
    BLOCK_ATTENTION_MAX_LENGTH,
    InferenceBert,
    _block_attention,
    _head_attention,
    _small_softmax,
)

LONG = " ".join(["a calm love story near a river"] * 6)  # > BLOCK_ATTENTION_MAX_LENGTH tokens


def encoder_for(pooling="mean", **kwargs):
    return build_text_encoder(tiny(pooling=pooling, sequence_length=64, num_layers=2, **kwargs),
                              CORPUS)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("texts", [MIXED, MIXED[1:2], tf.constant([LONG]), tf.constant([""])],
                         ids=["batch", "one_short", "one_long", "empty"])
def test_float32_copy_gives_the_keras_backbones_features(pooling, texts):
    """Both attention forms (one short text: block-diagonal; batches and long texts: per
    head), eagerly and traced as an export traces it, match the padded Keras path."""
    encoder = encoder_for(pooling)
    reference = padded_twin(encoder)(texts).numpy()
    encoder.use_inference_backbone("float32")
    np.testing.assert_allclose(encoder(texts).numpy(), reference, atol=1e-5)
    traced = tf.function(lambda t: encoder(t, training=False), input_signature=[STRINGS])
    np.testing.assert_allclose(traced(texts).numpy(), reference, atol=1e-5)


def test_query_lengths_cover_both_attention_forms():
    encoder = encoder_for()
    lengths = encoder.preprocessor(tf.constant([LONG, "love"]))["padding_mask"].numpy().sum(1)
    assert lengths[0] > BLOCK_ATTENTION_MAX_LENGTH >= lengths[1]


def test_block_and_head_attention_agree_with_padded_keys():
    rng = np.random.default_rng(0)
    heads, length, hidden = 3, 5, 12
    query, key, value = (tf.constant(rng.standard_normal((length, hidden)), tf.float32)
                         for _ in range(3))
    adder = tf.constant([0.0, 0.0, 0.0, -1e9, -1e9])  # the last two keys are padding
    block = _block_attention(query, key, value, adder, heads)
    head = _head_attention(query, key, value, adder[None, None, None, :], heads)
    np.testing.assert_allclose(block.numpy(), head.numpy(), atol=1e-6)
    # A padded key changes nothing.
    changed = tf.concat([key[:3], key[3:] + 5.0], axis=0)
    np.testing.assert_allclose(_block_attention(query, changed, value, adder, heads).numpy(),
                               block.numpy(), atol=1e-6)


def test_small_softmax_is_softmax_and_masked_keys_get_exactly_zero():
    """The block attention's explicit softmax: tf.nn.softmax's values to float rounding, and
    a key with the mask's -1e9 added gets weight 0.0 exactly (as in Keras's masked softmax)."""
    scores = tf.random.stateless_normal([7, 12, 7], seed=[1, 2]) * 4.0
    np.testing.assert_allclose(_small_softmax(scores).numpy(), tf.nn.softmax(scores).numpy(),
                               atol=1e-6)
    adder = tf.constant([0.0] * 5 + [-1e9] * 2)
    weights = _small_softmax(scores + adder).numpy()
    assert np.all(weights[..., 5:] == 0.0)
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, atol=1e-6)


def test_bfloat16_copy_stores_half_width_weights_and_stays_close():
    encoder = encoder_for()
    reference = encoder(MIXED).numpy()
    encoder.use_inference_backbone("bfloat16")
    module = encoder.inference_backbone
    kernels = [v for v in module.variables if "kernel" in v.name]
    assert kernels and {v.dtype for v in kernels} == {tf.bfloat16}
    features = encoder(MIXED).numpy()
    assert not np.allclose(features, reference, atol=1e-6)  # it really runs in bfloat16
    cosine = np.sum(features * reference, axis=1)
    assert cosine.min() > 0.999, cosine


def test_copy_is_a_snapshot_used_only_for_inference():
    """Training calls run (and train) the Keras backbone; the copy keeps the weights it was
    built from and is not among the layer's weights; ``None`` goes back."""
    encoder = encoder_for(trainable=True)
    before = encoder(MIXED).numpy()
    count = len(encoder.variables)
    encoder.use_inference_backbone("float32")
    assert len(encoder.variables) == count
    assert {id(v) for v in encoder.serving_variables} - {id(v) for v in encoder.variables}
    kernel = encoder.backbone.transformer_layers[0]._feedforward_output_dense.kernel
    kernel.assign(kernel * 2.0)
    np.testing.assert_allclose(encoder(MIXED).numpy(), before, atol=1e-5)
    assert not np.allclose(encoder(MIXED, training=True).numpy(), before, atol=1e-3)
    encoder.use_inference_backbone(None)
    assert encoder.inference_backbone is None and encoder.serving_variables == []
    assert not np.allclose(encoder(MIXED).numpy(), before, atol=1e-3)


def test_bad_precision_or_backbone_is_a_config_error():
    backbone = encoder_for().backbone
    with pytest.raises(ConfigError, match=r"float16.*float32, bfloat16"):
        InferenceBert(backbone, "float16")
    with pytest.raises(ConfigError, match="transformer_layers"):
        InferenceBert(tf.keras.layers.Dense(3))
    pre_norm = keras_nlp.layers.TransformerEncoder(intermediate_dim=8, num_heads=2,
                                                   normalize_first=True)
    pre_norm.build((None, None, 8))
    backbone.transformer_layers.append(pre_norm)
    try:
        with pytest.raises(ConfigError, match="normalize_first=True"):
            InferenceBert(backbone)
    finally:
        backbone.transformer_layers.pop()


def test_export_config_validates_text_backbone_and_precision():
    assert ExportConfig(text_backbone="fused", text_precision="bfloat16").text_precision == (
        "bfloat16")
    with pytest.raises(ConfigError, match=r"export.text_precision='bfloat16'.*text_backbone"):
        ExportConfig(text_precision="bfloat16")
    with pytest.raises(ConfigError, match="jit_compile"):
        ExportConfig(text_backbone="fused", text_precision="bfloat16", jit_compile=True)
    with pytest.raises(ConfigError, match=r"export.text_backbone='onnx'"):
        ExportConfig(text_backbone="onnx")
    with pytest.raises(ConfigError, match=r"export.text_precision='int8'"):
        ExportConfig(text_backbone="fused", text_precision="int8")
    assert ExportConfig(text_backbone="fused", text_weights="constants").text_weights == (
        "constants")
    with pytest.raises(ConfigError, match=r"export.text_weights='constants'.*text_backbone"):
        ExportConfig(text_weights="constants")
    with pytest.raises(ConfigError, match=r"export.text_weights='constants'.*jit_compile"):
        ExportConfig(text_backbone="fused", text_weights="constants", jit_compile=True)
    with pytest.raises(ConfigError, match=r"export.text_weights='int8'"):
        ExportConfig(text_backbone="fused", text_weights="int8")


def _kernel_sources(encoder, texts) -> tuple[list, list]:
    """The traced encoder call's 2-D ``Const`` nodes (every function of its graph, the
    attention ``tf.cond``'s branches included) and the names of the variables it reads."""
    traced = tf.function(lambda t: encoder(t, training=False), input_signature=[STRINGS])
    concrete = traced.get_concrete_function()
    graph_def = concrete.graph.as_graph_def()
    nodes = [*graph_def.node, *(n for f in graph_def.library.function for n in f.node_def)]
    constants = [tf.make_ndarray(n.attr["value"].tensor) for n in nodes
                 if n.op == "Const" and len(n.attr["value"].tensor.tensor_shape.dim) == 2]
    return constants, [v.name for v in concrete.variables]


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_constant_kernels_are_graph_constants_with_the_variables_features(precision):
    """``weights="constants"``: the traced graph holds each fused kernel as a ``Const`` node
    (its value, in the precision's dtype) and reads no kernel variable; biases stay variables;
    the features are the variable copy's to float rounding."""
    encoder = encoder_for()
    encoder.use_inference_backbone(precision)
    held = encoder.inference_backbone.layers
    kernels = [w[k].numpy() for w in held for k in w if k.endswith("_kernel")]
    reference = {texts.shape[0]: encoder(texts).numpy() for texts in (MIXED, MIXED[1:2])}
    constants, read = _kernel_sources(encoder, MIXED)
    assert not any(c.shape == k.shape and np.array_equal(c, k)
                   for c in constants for k in kernels)
    assert any("_kernel" in name for name in read)

    encoder.use_inference_backbone(precision, "constants")
    module = encoder.inference_backbone
    assert not [v for v in module.variables if "_kernel" in v.name]
    assert [v for v in module.variables if "_bias" in v.name]
    constants, read = _kernel_sources(encoder, MIXED)
    for kernel in kernels:  # once in each attention branch, read there directly
        assert sum(c.dtype == kernel.dtype and c.shape == kernel.shape
                   and np.array_equal(c, kernel) for c in constants) == 2
    assert not any("_kernel" in name for name in read), read
    assert any("_bias" in name for name in read), read
    traced = tf.function(lambda t: encoder(t, training=False), input_signature=[STRINGS])
    for texts in (MIXED, MIXED[1:2]):  # per-head and block attention
        np.testing.assert_allclose(encoder(texts).numpy(), reference[texts.shape[0]], atol=1e-6)
        np.testing.assert_allclose(traced(texts).numpy(), reference[texts.shape[0]], atol=1e-6)


def test_bad_weights_are_a_config_error():
    with pytest.raises(ConfigError, match=r"weights 'int8'.*variables, constants"):
        InferenceBert(encoder_for().backbone, "float32", "int8")


def test_export_config_validates_text_weights():
    assert ExportConfig().text_weights == "variables"
    for precision in ("float32", "bfloat16"):
        config = ExportConfig(text_backbone="fused", text_precision=precision,
                              text_weights="constants")
        assert config.text_weights == "constants"
    with pytest.raises(ConfigError, match=r"export.text_weights='frozen'"):
        ExportConfig(text_backbone="fused", text_weights="frozen")
    with pytest.raises(ConfigError, match=r"export.text_weights='constants'.*text_backbone"):
        ExportConfig(text_weights="constants")
    with pytest.raises(ConfigError, match=r"export.text_weights='constants'.*jit_compile"):
        ExportConfig(text_backbone="fused", text_weights="constants", jit_compile=True)


def test_constant_kernels_are_stored_once_for_every_calling_graph():
    """Two graphs that encode text (a batch and a single text, as an export's signatures do)
    call one shared function holding the constants (in its two attention branches): a
    SavedModel stores them once per branch, not once per calling graph."""
    encoder = encoder_for()
    encoder.use_inference_backbone("float32", "constants")
    qkv = encoder.inference_backbone.layers[0]["qkv_kernel"]
    holders = []
    for spec in (STRINGS, tf.TensorSpec([1], tf.string)):
        traced = tf.function(lambda t: encoder(t, training=False), input_signature=[spec])
        library = traced.get_concrete_function().graph.as_graph_def().library.function
        holders.append({f.signature.name for f in library for n in f.node_def
                        if n.op == "Const" and np.array_equal(
                            tf.make_ndarray(n.attr["value"].tensor), qkv)})
    assert len(holders[0]) == 2 and holders[0] == holders[1], holders  # the two branches
