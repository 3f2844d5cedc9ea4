"""Training: tf.distribute strategies, input pipelines and the Keras fit loop with resume."""

from tfmmrec.training.strategy import make_strategy
from tfmmrec.training.trainer import TrainResult, fit, interactions_dataset

__all__ = ["TrainResult", "fit", "interactions_dataset", "make_strategy"]
