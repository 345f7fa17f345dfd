"""MTEB retrieval tasks from local BEIR folders, and hub task / benchmark names, resolved from one spec string.

A task spec is one of:

- ``<folder or alias>[@<split>]``: a BEIR-layout folder (``corpus.jsonl``, ``queries.jsonl``,
  ``qrels/<split>.tsv``) or a data alias (``hotpotqa``, ``tiny_hotpotqa``), e.g. ``hotpotqa@dev`` or
  ``/tmp/scifact@test``. The split defaults to ``test``, else ``dev``, else the folder's only split. It
  becomes a :class:`LocalBEIRRetrieval` task: runs offline, nothing is downloaded.
- a named task set of :data:`TASK_SETS` (``nanobeir``, ``beir``, ``mteb_eng_v2_retrieval``,
  ``rteb_eng_public``), the papers' evaluation suites;
- an mteb task name (``NanoSciFactRetrieval``, ``SciFact``) or benchmark name (``NanoBEIR``, ``BEIR``,
  ``RTEB(eng, beta)``): the task definitions ship with mteb, their data come from the Hugging Face hub.
  :func:`preload` loads them once; offline it raises :class:`MTEBTaskUnavailableError` saying how to run
  the same evaluation from a local folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset
from mteb.abstasks import AbsTaskRetrieval
from mteb.abstasks.abstask import AbsTask
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskMetadata

from datamodules.beir import available_splits, check_data_folder, load_beir_folder
from datamodules.errors import DataFormatError, MTEBTaskUnavailableError
from datamodules.paths import ALIASES, resolve_data_path

PREFERRED_SPLITS = ("test", "dev")
# Named task sets for the papers' evaluations, taken from mteb's own benchmark definitions (nothing
# hard-coded drifts from the installed mteb): name -> (benchmark, which of its tasks)
TASK_SETS = {
    "nanobeir": ("NanoBEIR", "all"),  # 13 tasks, 50 queries each: cheap enough for every validation
    "beir": ("BEIR", "all"),  # the 15 BEIR tasks (MSMARCO on dev, the others on test)
    "mteb_eng_v2_retrieval": ("MTEB(eng, v2)", "retrieval"),  # the 10 retrieval tasks of MTEB(eng, v2)
    "rteb_eng_public": ("RTEB(eng, beta)", "public"),  # RTEB's public English tasks (the private need access)
}


def task_set(name: str) -> list[AbsTask]:
    """The tasks of a named set of :data:`TASK_SETS`."""
    import mteb

    benchmark, which = TASK_SETS[name]
    tasks = list(mteb.get_benchmark(benchmark).tasks)
    if which == "retrieval":
        tasks = [t for t in tasks if t.metadata.type == "Retrieval"]
    elif which == "public":
        tasks = [t for t in tasks if t.metadata.is_public]
    return tasks


def default_split(folder: Path) -> str:
    splits = available_splits(folder)
    if not splits:
        raise DataFormatError(folder / "qrels", "no qrels/<split>.tsv files: not a BEIR-layout folder")
    for split in PREFERRED_SPLITS:
        if split in splits:
            return split
    if len(splits) == 1:
        return splits[0]
    raise DataFormatError(
        folder / "qrels",
        f"several splits ({', '.join(splits)}) and none is test or dev: name one as '<folder>@<split>'",
    )


class LocalBEIRRetrieval(AbsTaskRetrieval):
    """A BEIR-layout folder as an mteb retrieval task (one split, English text, nDCG@10 main score).

    Queries are the split's judged queries in sorted id order (the same order and ``max_queries`` cut
    as :meth:`datamodules.retrieval.RetrievalDataModule.eval_queries`), so a local task reproduces the
    training-time evaluation set exactly.

    Args:
        folder: the BEIR folder or a data alias.
        split: the qrels split to evaluate (default: test, else dev, else the only one).
        name: task name in results and logs (default: ``<folder name>-<split>``, e.g. ``hotpotqa-dev``).
        max_queries: evaluate only the first N judged queries.
    """

    def __init__(
        self,
        folder: str | Path,
        split: str | None = None,
        name: str | None = None,
        max_queries: int | None = None,
        **kwargs: Any,
    ):
        self.folder = resolve_data_path(str(folder))
        check_data_folder(self.folder)
        self.split = split or default_split(self.folder)
        if self.split not in available_splits(self.folder):
            raise DataFormatError(
                self.folder / "qrels" / f"{self.split}.tsv",
                f"no such split (has: {', '.join(available_splits(self.folder)) or 'none'})",
            )
        self.max_queries = max_queries
        task_name = name or f"{str(folder) if str(folder) in ALIASES else self.folder.name}-{self.split}"
        self.metadata = TaskMetadata(
            name=task_name,
            description=f"Local BEIR-layout folder {self.folder} (split {self.split}).",
            dataset={"path": str(self.folder), "revision": "local"},
            type="Retrieval",
            category="t2t",
            modalities=["text"],
            eval_splits=[self.split],
            eval_langs=["eng-Latn"],
            main_score="ndcg_at_10",
        )
        super().__init__(**kwargs)

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        data = load_beir_folder(self.folder, [self.split])
        qrels = data.qrels[self.split]
        query_ids = [qid for qid in sorted(qrels) if any(rel > 0 for rel in qrels[qid].values())]
        if self.max_queries:
            query_ids = query_ids[: self.max_queries]
        queries = Dataset.from_list([{"id": qid, "text": data.queries[qid].text} for qid in query_ids])
        corpus = Dataset.from_list(
            [{"id": d.doc_id, "title": d.title, "text": d.text} for d in data.corpus.values()]
        )
        split_data = RetrievalSplitData(
            queries=queries,
            corpus=corpus,
            relevant_docs={qid: dict(qrels[qid]) for qid in query_ids},
            top_ranked=None,
        )
        self.dataset = {"default": {self.split: split_data}}
        self.data_loaded = True

    def unload_data(self) -> None:
        """Drop the data but keep this instance's metadata (mteb's version pops it to restore a class's)."""
        self.dataset = None
        self.data_loaded = False


def parse_local_spec(spec: str) -> tuple[str, str | None] | None:
    """``folder[@split]`` → (folder, split) when the folder exists or is an alias; else None (a hub name)."""
    folder, _, split = spec.partition("@")
    if folder in ALIASES or Path(folder).expanduser().is_dir():
        return folder, split or None
    if folder.startswith(("/", ".", "~")) or Path(folder).expanduser().is_file():
        check_data_folder(Path(folder).expanduser())  # a file or a missing folder: named as such
    return None


def resolve_task_spec(spec: str | AbsTask, max_queries: int | None = None) -> list[AbsTask]:
    """The mteb task objects one spec stands for (a benchmark stands for several)."""
    import mteb

    if isinstance(spec, AbsTask):
        return [spec]
    if spec in TASK_SETS:
        return task_set(spec)
    local = parse_local_spec(spec)
    if local is not None:
        folder, split = local
        return [LocalBEIRRetrieval(folder, split=split, max_queries=max_queries)]
    benchmark_names = {b.name for b in mteb.get_benchmarks()}
    if spec in benchmark_names:
        return list(mteb.get_benchmark(spec).tasks)
    try:
        return [mteb.get_task(spec)]
    except KeyError:
        raise ValueError(
            f"unknown MTEB task '{spec}': not a local BEIR folder or data alias ({', '.join(ALIASES)}), "
            "not an mteb task name (e.g. NanoSciFactRetrieval) and not an mteb benchmark (e.g. NanoBEIR, "
            "'RTEB(eng, beta)')"
        ) from None


def split_specs(text: str) -> list[str]:
    """``"hotpotqa@dev, RTEB(eng, beta)"`` → ``["hotpotqa@dev", "RTEB(eng, beta)"]``: commas inside brackets stay."""
    specs, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            specs.append(current.strip())
            current = ""
        else:
            current += char
    specs.append(current.strip())
    return [s for s in specs if s]


def resolve_tasks(specs: Iterable[str | AbsTask], max_queries: int | None = None) -> list[AbsTask]:
    tasks: list[AbsTask] = []
    for spec in specs:
        tasks.extend(resolve_task_spec(spec, max_queries=max_queries))
    names = [t.metadata.name for t in tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"MTEB task names must be unique; repeated: {', '.join(duplicates)}")
    return tasks


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"


def preload(tasks: Sequence[AbsTask]) -> None:
    """Load every task's data now (once), turning a hub failure into a message that says what to do."""
    for task in tasks:
        if task.data_loaded:
            continue
        try:
            task.load_data()
        except (DataFormatError, MTEBTaskUnavailableError):
            raise
        except Exception as err:  # datasets/huggingface_hub raise many types for an unreachable hub
            dataset = task.metadata.dataset.get("path", "?")
            reason = (
                "offline mode is set (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE = 1)"
                if hub_offline()
                else f"{type(err).__name__}: {str(err)[:300]}"
            )
            raise MTEBTaskUnavailableError(
                f"MTEB task '{task.metadata.name}' needs its data from the Hugging Face hub (dataset '{dataset}') "
                f"and could not load it: {reason}. With network access, unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE "
                "(experiments: offline=false). Without it, download the data elsewhere as a BEIR folder "
                "(corpus.jsonl, queries.jsonl, qrels/<split>.tsv) and name the folder as the task, e.g. "
                "'/data/scifact@test'."
            ) from err
