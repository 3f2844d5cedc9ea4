"""The public towers' constructor arguments are checked where they are given: a string where
a list of names belongs, a width that is not a positive integer or a rate outside [0, 1) is a
``ValueError`` naming the argument and the value (Keras accepted each, then failed deep in a
``Dense`` naming its own ``units``, or ran as another model: ``ItemTower("text", 8)`` had
the modalities ``t, e, x, t``)."""

from __future__ import annotations

import numpy as np
import pytest

from tfmmrec.towers.fusion import MaskedFusion
from tfmmrec.towers.item import ItemContentTable, ItemTower
from tfmmrec.towers.projection import ModalityProjection
from tfmmrec.towers.query import QueryTower

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
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_nonsense_argument_is_refused_naming_it(case):
    make, message = BAD[case]
    with pytest.raises(ValueError) as raised:
        make()
    assert message in str(raised.value)


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
