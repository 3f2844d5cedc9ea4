"""Towers: encoders (raw content → feature), projections (feature → shared space), fusion, query.

Towers are plain Keras layers, usable in anyone's own TFRS model. The layers with a
``get_config`` are registered as Keras-serializable (package ``tfmmrec``), so a functional model
holding them saves as ``.keras`` and loads with no ``custom_objects``.
"""

from tfmmrec.towers.encoders import Encoder, build_encoder
from tfmmrec.towers.fusion import MaskedFusion
from tfmmrec.towers.item import ItemContentTable, ItemTower
from tfmmrec.towers.projection import ModalityProjection
from tfmmrec.towers.query import QueryTower

__all__ = [
    "Encoder",
    "ItemContentTable",
    "ItemTower",
    "MaskedFusion",
    "ModalityProjection",
    "QueryTower",
    "build_encoder",
]
