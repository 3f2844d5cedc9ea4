"""Tests for tfmmrec.towers.text: the KerasNLP BERT encoder (raw strings → sentence feature)."""

from __future__ import annotations

import keras_nlp
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import shared_path
from tests.towers import tower_checks
from tfmmrec.config import TextTowerConfig
from tfmmrec.errors import ConfigError
from tfmmrec.towers.text import (
    SPECIAL_TOKENS,
    TextEncoder,
    _frequent_word_counts,
    build_text_encoder,
    build_vocabulary,
    masked_mean_pool,
    trim_padding,
)

CORPUS = ["A calm love story near a river", "A dark murder mystery with a detective",
          "Starship robots in a bright galaxy", "Wolves and whales of the quiet forest"]
TEXTS = tf.constant(["a calm galaxy", "the detective and the wolves", "love"])
STRINGS = tf.TensorSpec([None], tf.string)


def tiny(**kwargs) -> TextTowerConfig:
    settings = dict(hidden_dim=16, num_layers=1, num_heads=2, intermediate_dim=32,
                    sequence_length=16)
    return TextTowerConfig(**{**settings, **kwargs})


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return build_text_encoder(tiny(), CORPUS)


def test_text_tower_standard_checks(encoder, tmp_path):
    out = tower_checks.check_tower(encoder, [TEXTS], (3, 16), [STRINGS], tmp_path / "saved")
    tower_checks.check_unit_norm(out)
    assert encoder.feature_dim == 16 and encoder.modality == "text"


def test_frozen_text_encoder_weights_stay_frozen():
    tower_checks.check_frozen(build_text_encoder(tiny(trainable=False), CORPUS), [TEXTS])


def test_trainable_text_encoder_weights_change():
    tower_checks.check_trainable(build_text_encoder(tiny(trainable=True), CORPUS), [TEXTS])


def test_mean_pooling_ignores_padding_tokens():
    """The same backbone with 16 or 32 token slots gives the same feature for short texts."""
    long = build_text_encoder(tiny(sequence_length=32), CORPUS)
    short_preprocessor = keras_nlp.models.BertPreprocessor(long.preprocessor.tokenizer,
                                                           sequence_length=16)
    short = TextEncoder(short_preprocessor, long.backbone, "mean", {})
    np.testing.assert_allclose(short(TEXTS).numpy(), long(TEXTS).numpy(), atol=1e-5)


def test_masked_mean_pool_averages_kept_positions_only():
    sequence = tf.constant([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],
                            [[5.0, 6.0], [100.0, 100.0], [100.0, 100.0]],
                            [[7.0, 7.0], [8.0, 8.0], [9.0, 9.0]]])
    mask = tf.constant([[True, True, False], [True, False, False], [False, False, False]])
    np.testing.assert_allclose(masked_mean_pool(sequence, mask).numpy(),
                               [[2.0, 3.0], [5.0, 6.0], [0.0, 0.0]])


def test_feature_does_not_depend_on_the_rest_of_the_batch(encoder):
    alone = encoder(TEXTS[:1]).numpy()
    np.testing.assert_allclose(encoder(TEXTS).numpy()[:1], alone, atol=1e-6)


def test_cls_pooling_returns_normalised_first_token():
    encoder = build_text_encoder(tiny(pooling="cls"), CORPUS)
    tokens = encoder.preprocessor(TEXTS)
    first = encoder.backbone(tokens)["sequence_output"][:, 0, :]
    np.testing.assert_allclose(encoder(TEXTS).numpy(), tf.math.l2_normalize(first, -1).numpy(),
                               atol=1e-6)


def test_identity_is_stable_for_same_config_and_changes_with_it(encoder):
    assert build_text_encoder(tiny(), CORPUS).identity() == encoder.identity()
    assert build_text_encoder(tiny(seed=1), CORPUS).identity() != encoder.identity()
    assert build_text_encoder(tiny(pooling="cls"), CORPUS).identity() != encoder.identity()
    assert build_text_encoder(tiny(), [*CORPUS, "new words"]).identity() != encoder.identity()
    # a vocabulary of the same size but other words: same seeded weights, other token ids
    edited = [text.replace("river", "zebra") for text in CORPUS]
    vocabulary = build_vocabulary(CORPUS, tiny().max_vocabulary)
    renamed = build_vocabulary(edited, tiny().max_vocabulary)
    assert len(renamed) == len(vocabulary) and renamed != vocabulary
    assert build_text_encoder(tiny(), edited).identity() != encoder.identity()


MIXED = tf.constant(["love", "a calm love story near a river with wolves and whales", "",
                     "the detective"])


def padded_twin(encoder: TextEncoder) -> TextEncoder:
    """The same preprocessor and backbone without trimming: the reference path."""
    return TextEncoder(encoder.preprocessor, encoder.backbone, encoder.pooling, {},
                       trim_padding=False)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_trimmed_batches_give_the_padded_paths_features(pooling):
    encoder = build_text_encoder(tiny(pooling=pooling, sequence_length=32), CORPUS)
    assert encoder.trim_padding
    np.testing.assert_allclose(encoder(MIXED).numpy(), padded_twin(encoder)(MIXED).numpy(),
                               atol=1e-5)


def test_trim_padding_cuts_to_the_longest_real_sequence(encoder):
    tokens = encoder.preprocessor(tf.constant(["love", "the detective"]))
    trimmed = trim_padding(tokens)
    # [CLS] the detective [SEP] is the longest: 4 of the 16 slots.
    assert {k: v.shape.as_list() for k, v in trimmed.items()} == {
        "token_ids": [2, 4], "segment_ids": [2, 4], "padding_mask": [2, 4]}
    np.testing.assert_array_equal(trimmed["token_ids"], tokens["token_ids"][:, :4])
    empty = trim_padding(encoder.preprocessor(tf.constant([], tf.string)))
    assert empty["token_ids"].shape.as_list() == [0, 1]


def test_bucketed_trim_rounds_up_to_a_power_of_two_within_sequence_length():
    encoder = build_text_encoder(tiny(sequence_length=32), CORPUS)
    for words, width in ((1, 8), (9, 16), (20, 32)):  # + [CLS] and [SEP]: 3, 11, 22 tokens
        tokens = encoder.preprocessor(tf.constant([" ".join(["love"] * words)]))
        assert trim_padding(tokens, bucketed=True)["token_ids"].shape[1] == width, words


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_jit_compiled_encoder_gives_the_padded_paths_features(pooling):
    """XLA-compiled backbone + pooling on bucketed lengths, traced as an export traces it: the
    features of the padded path, and the graph holds a function XLA must compile."""
    encoder = build_text_encoder(tiny(pooling=pooling, sequence_length=32), CORPUS)
    encoder.jit_compile = True
    traced = tf.function(encoder.call, input_signature=[STRINGS])
    np.testing.assert_allclose(traced(MIXED).numpy(), padded_twin(encoder)(MIXED).numpy(),
                               atol=1e-5)
    library = traced.get_concrete_function().graph.as_graph_def().library.function
    assert any(f.attr["_XlaMustCompile"].b for f in library)


def test_traced_encoder_trims_inside_the_graph(encoder):
    """An exported signature (traced for any batch of strings) runs the trimmed backbone."""
    seen = []
    original = encoder.backbone.call

    def spy(inputs, *args, **kwargs):
        seen.append(inputs["token_ids"].shape.as_list())
        return original(inputs, *args, **kwargs)

    encoder.backbone.call = spy
    try:
        traced = tf.function(encoder.call, input_signature=[STRINGS])
        out = traced(MIXED).numpy()
    finally:
        del encoder.backbone.call
    assert seen and seen[0] == [None, None]  # the length is decided per batch at run time
    np.testing.assert_allclose(out, padded_twin(encoder)(MIXED).numpy(), atol=1e-5)


def test_vocabulary_is_deterministic_frequency_ordered_and_capped():
    vocabulary = build_vocabulary(["Red red blue", "green RED"], 200)
    assert vocabulary[:len(SPECIAL_TOKENS)] == SPECIAL_TOKENS
    assert vocabulary[-3:] == ["red", "blue", "green"]  # by frequency, then alphabetically
    assert build_vocabulary(["green RED", "Red red blue"], 200) == vocabulary
    assert len(build_vocabulary(CORPUS * 3, 95)) == 95


def test_word_counts_are_exact_below_capacity_and_bounded_above():
    import collections
    rng = np.random.default_rng(0)
    frequent = [f"w{i}" for i in rng.integers(0, 30, size=3000)]
    exact = collections.Counter(frequent)
    assert dict(_frequent_word_counts(iter(frequent), capacity=20)) == exact  # 30 <= 2 * 20

    # 3,000 frequent words interleaved with 5,000 words seen once (an id per item's title).
    ids = [f"id{i}" for i in range(5000)]
    stream = [w for pair in zip(frequent, ids[:3000], strict=True) for w in pair] + ids[3000:]
    # Pruned to <= 2 * 200 entries; a count drops by at most 8,000 / 201 < 40, below the
    # rarest frequent word's count.
    assert min(exact.values()) > 40
    counts = _frequent_word_counts(iter(stream), capacity=200)
    assert len(counts) <= 400
    survivors = sorted(counts, key=lambda w: (-counts[w], w))[:30]
    assert set(survivors) == set(exact)  # every frequent word is kept, ahead of any id


def test_unseen_words_decompose_instead_of_becoming_unknown(encoder):
    tokens = encoder.preprocessor(tf.constant(["zyxwv"]))["token_ids"].numpy()[0]
    unknown = encoder.preprocessor.tokenizer.token_to_id("[UNK]")
    assert unknown not in tokens


def test_missing_preset_raises_config_error_naming_field(tmp_path):
    with pytest.raises(ConfigError, match=r"text\.preset=.*no-such-preset"):
        build_text_encoder(TextTowerConfig(preset=str(tmp_path / "no-such-preset")), CORPUS)


# --- pretrained MiniLM preset from ../shared --------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    preset = shared_path("weights", "minilm-l6-h384-uncased")
    return build_text_encoder(TextTowerConfig(preset=str(preset), sequence_length=32), [])


@pytest.mark.needs_shared
def test_minilm_preset_is_frozen_384_dim_and_unit_norm(minilm):
    out = tower_checks.check_output(minilm, [TEXTS], (3, 384))
    tower_checks.check_unit_norm(out)
    assert minilm.trainable_weights == []


@pytest.mark.needs_shared
def test_minilm_paraphrase_is_closer_than_unrelated_sentence(minilm):
    out = minilm(tf.constant(["A man is playing a guitar.", "Someone plays the guitar.",
                              "The stock market fell sharply today."])).numpy()
    paraphrase, unrelated = out[0] @ out[1], out[0] @ out[2]
    assert paraphrase > 0.6 > 0.3 > unrelated


@pytest.mark.needs_shared
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_minilm_trimmed_features_equal_padded_features(minilm, pooling):
    encoder = TextEncoder(minilm.preprocessor, minilm.backbone, pooling, {})
    np.testing.assert_allclose(encoder(MIXED).numpy(), padded_twin(encoder)(MIXED).numpy(),
                               atol=1e-5)
