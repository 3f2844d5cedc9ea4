"""Models: TFRS models over the towers; ``compute_loss`` is the one extension point."""

from tfmmrec.models.retrieval import RetrievalModel

__all__ = ["RetrievalModel"]
