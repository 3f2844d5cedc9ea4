"""Tests for the facets modality: short categorical columns encoded by a text encoder of their
own (``modalities.text.FacetsModality``, ``towers.text.FacetsEncoder``)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tests.data.folders import make_folder
from tfmmrec import modalities
from tfmmrec.config import DataConfig, FacetsTowerConfig
from tfmmrec.data.dataset import load_dataset
from tfmmrec.towers.base import Encoder
from tfmmrec.towers.cf import LinearCF, LinearCFWeights
from tfmmrec.towers.text import FacetsEncoder, TextEncoder

ITEMS = """\
item_id,title,year,genres,description
i1,Starship Love,1995,Comedy|Romance,A calm story about a robot
i2,Forest Tides,1997,,A storm
i3,The Riddle,,,A dark mystery
"""


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "d", items=ITEMS, media=False)


def test_facets_come_only_from_configured_columns_joined_like_text(folder):
    inferred = load_dataset(DataConfig(path=str(folder))).catalog
    assert "facets" not in inferred.modalities  # never inferred from the table
    assert inferred.columns.text == ("title", "genres", "description")  # year: numeric
    catalog = load_dataset(DataConfig(path=str(folder), facet_columns=["year", "genres"])
                           ).catalog
    assert catalog.modalities == ("text", "facets")
    assert catalog.columns.of("facets") == ("year", "genres")
    assert list(catalog.values("facets")) == ["1995. Comedy|Romance", "1997", ""]
    spec = modalities.get("facets")
    assert [spec.present(v) for v in catalog.values("facets")] == [True, True, False]


def test_facets_records_are_keyed_by_their_own_name():
    spec = modalities.get("facets")
    features = spec.record_features("1995. Comedy", {}, {})
    assert set(features) == set(spec.record_spec()) == {"facets", "facets_key"}
    example = tf.train.Example(features=tf.train.Features(feature=features))
    parsed = tf.io.parse_example([example.SerializeToString()], spec.record_spec())
    out = spec.parse_record(parsed, {})
    assert out["facets"].numpy().tolist() == [b"1995. Comedy"]
    assert out["facets_present"].numpy().tolist() == [True]
    # the text modality's records are unchanged
    assert set(modalities.get("text").record_spec()) == {"text", "text_key"}


def test_facets_encoder_is_a_text_encoder_of_its_own_modality_and_round_trips():
    config = FacetsTowerConfig(hidden_dim=8, num_heads=2, num_layers=1, intermediate_dim=16)
    encoder = modalities.get("facets").build_encoder(config, ["1995 comedy", "1997 drama"])
    assert isinstance(encoder, FacetsEncoder) and isinstance(encoder, TextEncoder)
    assert encoder.modality == "facets" and encoder.name == "facets_encoder"
    assert config.sequence_length == 32  # short columns: a short default
    texts = tf.constant(["1995. comedy", "1997"])
    restored = Encoder.from_config(encoder.get_config())
    assert isinstance(restored, FacetsEncoder) and restored.modality == "facets"
    restored.set_weights(encoder.get_weights())
    np.testing.assert_allclose(restored(texts).numpy(), encoder(texts).numpy(), atol=1e-6)


def test_the_content_map_reads_the_facets_block_in_modality_order():
    """Hand-computed: one feature per block, ridge weights chosen by hand.

    Blocks are L2-normalised per item (a 1-d block becomes its sign) and zero when missing:
    text [3] → 1, facets [-2] → -1, so the centred features are (1 − 0.5, −1 − 0) and the
    prediction is 0.5·2 + (−1)·3 + 1 = −1; an item without facets: 0.5·2 + 0 + 1 = 2.
    """
    weights = LinearCFWeights(
        query_factors=np.zeros((2, 1), np.float32), item_factors=np.zeros((2, 1), np.float32),
        warm=np.zeros(2, bool), content_weights=np.array([[2.0], [3.0]], np.float32),
        content_mean=np.array([0.5, 0.0], np.float32), factor_mean=np.array([1.0], np.float32))
    layer = LinearCF(weights, ["text", "facets"])
    content = {"text": tf.constant([[3.0], [3.0]]), "text_mask": tf.constant([1.0, 1.0]),
               "facets": tf.constant([[-2.0], [5.0]]), "facets_mask": tf.constant([1.0, 0.0])}
    np.testing.assert_allclose(layer.item(content).numpy(), [[-1.0], [2.0]], atol=1e-6)
    restored = LinearCF.from_config(layer.get_config())
    restored.set_weights(layer.get_weights())
    assert restored.modalities == ("text", "facets")
    np.testing.assert_allclose(restored.item(content).numpy(), [[-1.0], [2.0]], atol=1e-6)
