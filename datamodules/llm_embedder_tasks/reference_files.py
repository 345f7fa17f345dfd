"""The reference's own training files (FlagOpen/FlagEmbedding ``research/llm_embedder``), read as tasks.

The reference trains on JSON-lines files shipped in one archive, ``llm-embedder.tar.gz`` of the hub dataset
repository ``namespace-Pt/projects`` (16.9 GB; not a ``datasets`` table). Its ``scripts/llm-embedder.sh``
names them (``data_root`` + path): ``chat/msc/train.json``, ``convsearch/qrecc/train.concat.json``,
``lrlm/{arxiv,books3,codeparrot}/train.json``, ``qa/{msmarco,nq}/train.json``, ``tool/toolbench/train.json``,
``icl/icl/train.json``. Row fields: ``query``, ``answers``, ``pos`` / ``neg`` (key texts) with optional
``pos_index`` / ``neg_index`` (corpus ids) and ``teacher_scores``; chat rows carry ``history`` instead;
tool rows ``qid`` instead of ``query_id``.

This is where QReCC conversational search gets **passages** as keys (``pos``: the gold passage of the
54M-passage collection, ``neg``: 32 others), as in the reference. Teacher scores in the files are not used:
this project scores with its own frozen LM.

``root``: a folder holding the extracted files (``<root>/chat/msc/train.json`` ...), or None to download the
archive with ``huggingface_hub.hf_hub_download`` and extract the named files once into the cache.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path
from typing import Any

from datamodules.errors import DataFormatError
from datamodules.jsonl import read_jsonl, require_field
from datamodules.llm_embedder_tasks.task_example import TaskExample
from retrieval.cache import build_dir_atomically, cache_root

ARCHIVE_REPO = "namespace-Pt/projects"
ARCHIVE_FILE = "llm-embedder.tar.gz"
TRAIN_FILES = {
    "chat": "chat/msc/train.json",
    "convsearch": "convsearch/qrecc/train.concat.json",
    "lrlm_arxiv": "lrlm/arxiv/train.json",
    "lrlm_books3": "lrlm/books3/train.json",
    "lrlm_codeparrot": "lrlm/codeparrot/train.json",
    "qa_msmarco": "qa/msmarco/train.json",
    "qa_nq": "qa/nq/train.json",
    "tool": "tool/toolbench/train.json",
    "icl": "icl/icl/train.json",
}
KEYS_FROM_HISTORY = {"chat"}
LABEL_FREE = {"chat", "lrlm"}  # keys without relevance labels: the teacher decides


def extract_reference_files(archive: Path, target: Path) -> None:
    """Extract the :data:`TRAIN_FILES` members of the archive (under any top folder) into ``target``."""
    wanted = set(TRAIN_FILES.values())
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            relative = next((w for w in wanted if member.name.endswith(w)), None)
            if member.isfile() and relative is not None:
                member.name = relative
                tar.extract(member, target, filter="data")


def reference_root(root: str | Path | None = None) -> Path:
    """The folder of the reference files: ``root`` as given, or the cached extraction of the hub archive."""
    if root is not None:
        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise DataFormatError(
                folder, "reference data folder not found (expected chat/msc/train.json, ...)"
            )
        return folder

    def fetch(tmp: Path) -> None:
        from huggingface_hub import hf_hub_download

        archive = hf_hub_download(repo_id=ARCHIVE_REPO, filename=ARCHIVE_FILE, repo_type="dataset")
        extract_reference_files(Path(archive), tmp)

    return build_dir_atomically(cache_root() / "llm_embedder_reference", fetch)


def key_id(text: str, index: Any) -> str:
    """The corpus id when the file gives one, else a hash of the text (equal texts: one key)."""
    return str(index) if index is not None else "t" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def row_example(row: dict[str, Any], kind: str, path: Path, line: int, use_labels: bool) -> TaskExample:
    """One reference row as a :class:`TaskExample` of ``kind`` (the family: qa, tool, chat, ...)."""
    query = require_field(row, "query", str, path, line)
    answers = require_field(row, "answers", list, path, line) if kind != "tool" else []
    query_id = str(row.get("query_id", row.get("qid", line)))
    if kind in KEYS_FROM_HISTORY:
        keys, labels = list(require_field(row, "history", list, path, line)), None
        ids: list[Any] = [f"{query_id}-h{i}" for i in range(len(keys))]
    else:
        pos, neg = require_field(row, "pos", list, path, line), require_field(row, "neg", list, path, line)
        keys, labels = [*pos, *neg], [True] * len(pos) + [False] * len(neg)
        indices = [*(row.get("pos_index") or [None] * len(pos)), *(row.get("neg_index") or [None] * len(neg))]
        ids = [key_id(text, index) for text, index in zip(keys, indices)]
    if not all(isinstance(k, str) for k in keys) or not all(isinstance(a, str) for a in answers):
        raise DataFormatError(path, "expected lists of strings", line, "history/pos/neg/answers")
    free = kind in LABEL_FREE or not use_labels or labels is None
    return TaskExample(
        kind, query_id, query, tuple(answers), tuple(keys), tuple(ids), None if free else tuple(labels)
    )


def reference_task(
    file: str,
    kind: str | None = None,
    root: str | Path | None = None,
    use_labels: bool = True,
    max_queries: int | None = None,
) -> list[TaskExample]:
    """Examples of one reference file (``file``: a key of :data:`TRAIN_FILES` or a relative path).

    ``kind`` defaults to the file's family (``qa_msmarco`` → ``qa``). Rows with no key are skipped (the
    reference's filtering); ``max_queries`` keeps the first rows.
    """
    relative = TRAIN_FILES.get(file, file)
    kind = kind or (file.split("_")[0] if file in TRAIN_FILES else relative.split("/")[0])
    path = reference_root(root) / relative
    examples = []
    for line, row in read_jsonl(path):
        example = row_example(row, kind, path, line, use_labels)
        if example.candidates:
            examples.append(example)
        if max_queries is not None and len(examples) >= max_queries:
            break
    return examples
