"""What modules and callbacks may ask of a datamodule, as typing protocols (no ``hasattr`` probing).

- :class:`CorpusSource`: a corpus and evaluation queries (every evaluation callback; DREAM's mining and
  Rabtriever's on-policy documents search its corpus).
- :class:`TrainingExamples`: labelled training queries with groups (DREAM's head calibration and mining).
- :class:`TrainingQueries`: unlabeled training queries (LLM2Vec-Gen generates a response to each).
- :class:`TaskExamples`: LLM-Embedder's per-task examples (its teacher scores them before training).

``isinstance(datamodule, CorpusSource)`` checks that the members exist; the messages of the callers say
which datamodule to use when one is missing.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from datamodules.llm_embedder_tasks.task_example import TaskExample
from datamodules.records import Query, RetrievalCorpus


@runtime_checkable
class CorpusSource(Protocol):
    """A corpus and an evaluation split: ``path`` (folder or alias) or ``hub_name`` says where it came from."""

    path: str
    hub_name: str | None
    eval_split: str
    max_eval_queries: int | None

    def load_corpus(self) -> RetrievalCorpus: ...

    def eval_queries(self) -> list[Query]: ...


def source_name(datamodule: CorpusSource) -> str:
    """The data set's name for cache keys: the hub name, else the folder or alias."""
    return datamodule.hub_name or str(datamodule.path)


@runtime_checkable
class TrainingExamples(Protocol):
    """Labelled training queries (``train_examples``: :class:`datamodules.retrieval.TrainExample`) drawn in
    groups of ``group_size`` documents, over the corpus of :meth:`load_corpus`."""

    train_examples: list
    group_size: int

    def load_corpus(self) -> RetrievalCorpus: ...


@runtime_checkable
class TrainingQueries(Protocol):
    """Unlabeled training queries, available after ``setup("fit")``."""

    train_queries: list[Query]

    def setup(self, stage: str | None = None) -> None: ...


@runtime_checkable
class TaskExamples(Protocol):
    """LLM-Embedder's examples per configured task (after ``setup("fit")``)."""

    examples: dict[str, list[TaskExample]]


def corpus_source(datamodule: object, needed_by: str) -> CorpusSource:
    """``datamodule`` as a :class:`CorpusSource`, or a ``TypeError`` naming who needs one."""
    if not isinstance(datamodule, CorpusSource):
        raise TypeError(
            f"{needed_by} needs a datamodule with a corpus and an evaluation split (load_corpus, eval_queries, "
            f"eval_split), e.g. datamodules.retrieval.RetrievalDataModule; got {type(datamodule).__name__}"
        )
    return datamodule
