"""Lightning callbacks: retrieval evaluation, export, and run bookkeeping."""

from callbacks.export import ExportEmbedder
from callbacks.retrieval_eval import RetrievalEvaluation

__all__ = ["ExportEmbedder", "RetrievalEvaluation"]
