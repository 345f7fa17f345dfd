"""LightningDataModules and data readers (BEIR layout, QA-with-candidates)."""

from datamodules.records import Document, QAExample, Query, RetrievalCorpus
from datamodules.errors import DataFormatError

__all__ = ["DataFormatError", "Document", "QAExample", "Query", "RetrievalCorpus"]
