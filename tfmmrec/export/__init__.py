"""Export: trained towers + a ScaNN/BruteForce index → versioned SavedModels for TF Serving."""

from tfmmrec.export.index import build_index
from tfmmrec.export.module import RetrievalServingModule, ServingTowers
from tfmmrec.export.writer import next_version, write_version

__all__ = ["RetrievalServingModule", "ServingTowers", "build_index", "next_version",
           "write_version"]
