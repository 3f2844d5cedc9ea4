"""Training: tf.distribute strategies, input pipelines and the Keras fit loop with resume."""

from tfmmrec.training.strategy import make_strategy
from tfmmrec.training.trainer import TrainResult, dataframe_dataset, fit

__all__ = ["TrainResult", "dataframe_dataset", "fit", "make_strategy"]
