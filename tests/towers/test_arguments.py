"""The public towers' constructor arguments are checked where they are given: a string where
a list of names belongs, a width that is not a positive integer or a rate outside [0, 1) is a
``ValueError`` naming the argument and the value (Keras accepted each, then failed deep in a
``Dense`` naming its own ``units``, or ran as another model: ``ItemTower("text", 8)`` had
the modalities ``t, e, x, t``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tfmmrec.towers.fusion import MaskedFusion
from tfmmrec.towers.item import ItemContentTable, ItemTower
from tfmmrec.towers.projection import ModalityProjection
from tfmmrec.towers.query import QueryTower

USERS = pd.DataFrame({"user_id": ["u1", "u2"], "age": [20, 30]})

BAD = {
    "modalities_string": (lambda: ItemTower("text", 8),
                          "modalities must be a sequence of names (a list of strings), got "
                          "'text'"),
    "repeated_modality": (lambda: ItemTower(["text", "text"], 8),
                          "modalities names 'text' more than once"),
    "negative_dim": (lambda: ItemTower(["text"], dim=-8), "dim must be an integer >= 1, got -8"),
    "float_dim": (lambda: ModalityProjection(8.5), "dim must be an integer >= 1, got 8.5"),
    "hidden_string": (lambda: ModalityProjection(8, hidden="16"),
                      "hidden must be a sequence of integers >= 1, got '16'"),
    "zero_fusion_width": (lambda: MaskedFusion(hidden=0), "hidden must be an integer >= 1"),
    "modality_dropout": (lambda: ItemTower(["text"], 8, modality_dropout=2.0),
                         "modality_dropout must be a rate in [0, 1), got 2.0"),
    "misspelt_feature_dropout": (lambda: ItemTower(["text"], 8, feature_dropout={"imgae": 0.5}),
                                 "feature_dropout: unknown modality 'imgae'; the model's are "
                                 "text"),
    "user_ids_string": (lambda: QueryTower("abc", 8),
                        "user_ids must be a sequence of ids, got the string 'abc'"),
    "id_dropout": (lambda: QueryTower(["u1"], 8, id_dropout=3),
                   "id_dropout must be a rate in [0, 1), got 3"),
    "mask_rows": (lambda: ItemContentTable({"text": np.zeros((4, 2))}, {"text": np.ones(3)}),
                  "text: [4] content row(s) but 3 mask entries"),
    # ItemTower: ad-hoc id_dropout check (bare TypeError for "0.1"/None, unnamed for 1.5)
    "item_id_dropout": (lambda: ItemTower(["text"], 8, id_dropout=1.5),
                        "id_dropout must be a rate in [0, 1), got 1.5"),
    "item_id_dropout_string": (lambda: ItemTower(["text"], 8, id_dropout="0.1"),
                               "id_dropout must be a rate in [0, 1), got '0.1'"),
    "item_id_dropout_none": (lambda: ItemTower(["text"], 8, id_dropout=None),
                             "id_dropout must be a rate in [0, 1), got None"),
    # no modality and no id embedding: accepted, then tf.add_n([]) at the first call
    "item_tower_of_nothing": (lambda: ItemTower([], 8),
                              "ItemTower needs a modality or num_items"),
    "misspelt_encoder": (lambda: ItemTower(["text"], 8, encoders={"imgae": object()}),
                         "encoders: unknown modality 'imgae'; the model's are text"),
    # checked only when a fusion layer was built (with modalities)
    "fusion_without_modalities": (lambda: ItemTower([], 8, num_items=3, fusion="concat"),
                                  "fusion must be one of 'concat_mlp', 'mean', 'gated', "
                                  "'attention', got 'concat'"),
    # ItemContentTable: silently wrong batches
    "rows_across_modalities": (lambda: ItemContentTable(
        {"text": np.zeros((3, 2)), "image": np.zeros((5, 2))},
        {"text": np.ones(3), "image": np.ones(5)}),
        "every modality needs one row per item, got text: 3, image: 5"),
    "mask_of_fives": (lambda: ItemContentTable({"text": np.zeros((3, 2))},
                                               {"text": np.array([5, 0, 1])}),
                      "masks['text'] must hold 0 (absent) or 1 (present) only, got [5]"),
    "mask_2d": (lambda: ItemContentTable({"text": np.zeros((3, 2))}, {"text": np.ones((3, 1))}),
                "masks['text'] must be 1-D (one 0/1 entry per item), got shape (3, 1)"),
    "nan_features": (lambda: ItemContentTable({"text": np.array([[0, 1], [np.nan, 0], [0, 0]])},
                                              {"text": np.ones(3)}),
                     "contents['text'] has NaN or infinite values in 1 row(s) (first: [1])"),
    "mask_key_as_modality": (lambda: ItemContentTable(
        {"text": np.zeros((3, 2)), "text_mask": np.zeros((3, 2))},
        {"text": np.ones(3), "text_mask": np.ones(3)}),
        "modality name(s) ['text_mask'] are keys of the content batch"),
    # QueryTower
    "feature_columns_string": (lambda: QueryTower(["u1", "u2"], 8, users=USERS,
                                                  feature_columns="age"),
                               "feature_columns must be a sequence of names (a list of "
                               "strings), got 'age'"),
    "feature_columns_without_users": (lambda: QueryTower(["u1", "u2"], 8,
                                                         feature_columns=["age"]),
                                      "feature_columns ['age'] need users"),
    "feature_column_missing": (lambda: QueryTower(["u1", "u2"], 8, users=USERS,
                                                  feature_columns=["agee"]),
                               "users has no column 'agee'"),
    "history_1d": (lambda: QueryTower(["u1"], 8, history=np.array([0, 1])),
                   "history must be a [num_users, H] array of item indices (-1 = padding), "
                   "one row per user id (1); got shape (2,)"),
    "history_rows": (lambda: QueryTower(["u1", "u2"], 8, history=np.array([[0, 1]])),
                     "one row per user id (2); got shape (1, 2)"),
    "user_ids_none": (lambda: QueryTower(None, 8),
                      "user_ids must be a sequence of ids, got None"),
    "user_ids_empty": (lambda: QueryTower([], 8), "user_ids is empty"),
    "user_ids_repeated": (lambda: QueryTower(["u1", "u2", "u1"], 8),
                          "user_ids names 'u1' more than once"),
}

WRONG_KIND = {  # a value of another kind altogether: a TypeError naming the argument
    "feature_dropout_scalar": (lambda: ItemTower(["text"], 8, feature_dropout=0.5),
                               "feature_dropout must be a mapping of modality → dropout rate, "
                               "got 0.5"),
    "encoder_not_an_encoder": (lambda: ItemTower(["text"], 8, encoders={"text": object()}),
                               "encoders['text'] must be an Encoder"),
    "contents_none": (lambda: ItemContentTable(None, None),
                      "contents must be a mapping of modality → content"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_nonsense_argument_is_refused_naming_it(case):
    make, message = BAD[case]
    with pytest.raises(ValueError) as raised:
        make()
    assert message in str(raised.value)


@pytest.mark.parametrize("case", sorted(WRONG_KIND))
def test_an_argument_of_the_wrong_kind_is_a_type_error_naming_it(case):
    make, message = WRONG_KIND[case]
    with pytest.raises(TypeError) as raised:
        make()
    assert message in str(raised.value)


def test_a_history_given_as_nested_lists_is_the_array_it_spells():
    """``history=[[0, 1]]`` was an AttributeError (``.shape``); ``from_config`` reads a list."""
    listed = QueryTower(["u1"], 8, history=[[0, 1]])
    np.testing.assert_array_equal(listed.history.numpy(), [[-1, -1], [0, 1]])


def test_valid_arguments_of_every_kind_are_accepted():
    tower = ItemTower(("text", "image"), np.int64(8), projection_hidden=[16],
                      feature_dropout={"image": 0.5}, modality_dropout=0.1)
    assert tower.dim == 8 and tower.modalities == ("text", "image")
    assert QueryTower(np.array(["u1", "u2"]), 8, id_dropout=0.2).vocabulary == ("u1", "u2")


def test_build_encoder_names_the_config_class_it_needs():
    """A dict or another tower's section was a bare AttributeError ('image_size'); one text
    as the corpus gave a vocabulary of its characters."""
    from tfmmrec.config import ImageTowerConfig, TextTowerConfig
    from tfmmrec.errors import ConfigError
    from tfmmrec.towers.encoders import build_encoder

    for config in (TextTowerConfig(), {"image_size": 32}, None):
        with pytest.raises(ConfigError, match=r"build_encoder\('image', config\): expected a "
                                              r"ImageTowerConfig, got "):
            build_encoder("image", config)
    with pytest.raises(ConfigError, match="corpus must be a sequence of texts"):
        build_encoder("text", TextTowerConfig(), "a red fox jumps")
    assert build_encoder("image", ImageTowerConfig(image_size=32, cnn_filters=[4])) is not None
