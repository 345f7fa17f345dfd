"""LightningDataModules and data readers (BEIR layout, QA-with-candidates)."""

from datamodules.errors import DataFormatError
from datamodules.records import Document, QAExample, Query, RetrievalCorpus

__all__ = ["DataFormatError", "Document", "QAExample", "Query", "RetrievalCorpus"]
