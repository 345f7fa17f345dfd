"""Hub QA sources (MS MARCO, NQ, HotpotQA; :mod:`datamodules.hub_qa`) written once as a local BEIR folder.

The folder has the layout every local reader takes (``corpus.jsonl``, ``queries.jsonl`` with
``metadata.answers``, ``qrels/train.tsv`` and ``qrels/dev.tsv``, ``qa_candidates.jsonl``), so training
then reads it with the strict local readers and the same folder works offline. Rows are streamed; each
question id is prefixed with its source (``nq-0``); a passage shared by several questions is one corpus
document. Questions without an answer or a supporting passage go through ``on_missing`` (an error naming
the table and row, or left out with a counted notice).

``data.hub_sources`` builds the folder in the cache (``$LSR_CACHE_DIR/hub_data/<key>``, keyed by the source
settings, written atomically) on first use. Without network on the training machine, build it elsewhere:
``python -m datamodules.hub_export msmarco nq hotpotqa --max-train-queries 100000 --out /data/qa_mix`` and set
``data.path=/data/qa_mix``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from datamodules.errors import DataFormatError
from datamodules.hub_qa import QA_TABLES, iter_qa_examples
from datamodules.missing import MissingReport
from datamodules.records import QAExample
from retrieval.cache import build_dir_atomically, cache_root

EXPORT_VERSION = 1  # bump when the written layout changes: older cached folders are then not reused


@dataclass(frozen=True)
class SourceSpec:
    """One hub QA source and how many of its questions to keep (None: all)."""

    name: str
    max_train_queries: int | None = None
    max_dev_queries: int | None = 500

    @classmethod
    def parse(cls, spec: str | dict[str, Any]) -> SourceSpec:
        spec = {"name": spec} if isinstance(spec, str) else dict(spec)
        unknown = set(spec) - {"name", "max_train_queries", "max_dev_queries"}
        if unknown or spec.get("name") not in QA_TABLES:
            raise ValueError(
                f"data.hub_sources entry {spec}: expected a name ({', '.join(QA_TABLES)}) or "
                "{name, max_train_queries, max_dev_queries}"
            )
        return cls(**spec)


class FolderWriter:
    """Writes one BEIR folder incrementally (documents deduplicated by id)."""

    def __init__(self, folder: Path):
        (folder / "qrels").mkdir(parents=True, exist_ok=True)
        self.files: dict[str, TextIO] = {
            name: (folder / name).open("w", encoding="utf-8")
            for name in (
                "corpus.jsonl",
                "queries.jsonl",
                "qa_candidates.jsonl",
                "qrels/train.tsv",
                "qrels/dev.tsv",
            )
        }
        for split in ("train", "dev"):
            self.files[f"qrels/{split}.tsv"].write("query-id\tcorpus-id\tscore\n")
        self.seen_documents: set[str] = set()
        self.seen_queries: set[str] = set()
        self.counts = {"documents": 0, "train": 0, "dev": 0}

    def write(self, source: str, split: str, example: QAExample) -> None:
        qid = f"{source}-{example.query.query_id}"
        if (
            qid in self.seen_queries
        ):  # e.g. a question in both splits of a source: never train on a dev question
            raise DataFormatError(
                example.location()[0], f"question id '{qid}' appears twice", example.location()[1]
            )
        self.seen_queries.add(qid)
        answers = list(example.query.answers)
        query = {"_id": qid, "text": example.query.text, "metadata": {"answers": answers, "source": source}}
        self.files["queries.jsonl"].write(json.dumps(query, ensure_ascii=False) + "\n")
        candidates = []
        for cand in example.candidates:
            doc = cand.document
            if doc.doc_id not in self.seen_documents:
                self.seen_documents.add(doc.doc_id)
                self.counts["documents"] += 1
                row = {"_id": doc.doc_id, "title": doc.title, "text": doc.text}
                self.files["corpus.jsonl"].write(json.dumps(row, ensure_ascii=False) + "\n")
            if cand.is_relevant:
                self.files[f"qrels/{split}.tsv"].write(f"{qid}\t{doc.doc_id}\t1\n")
            candidates.append({**asdict(doc), "is_supporting": cand.is_relevant})
        line = {"qid": qid, "query": example.query.text, "answers": answers, "candidates": candidates}
        self.files["qa_candidates.jsonl"].write(json.dumps(line, ensure_ascii=False) + "\n")
        self.counts[split] += 1

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()


def usable(example: QAExample, report: MissingReport) -> bool:
    """Whether the question can be trained on; a defect goes to ``report`` (raises under ``error``)."""
    qid = example.query.query_id
    if not example.query.text.strip():
        report.add("an empty query text", *example.location(), "query", qid)
    elif not example.query.answers:
        report.add("no answer", *example.location(), "answers", qid)
    elif not example.positives:
        report.add("no supporting passage", *example.location(), "candidates", qid)
    else:
        return True
    return False


def export_sources(sources: Iterable[SourceSpec], folder: Path, on_missing: str = "error") -> dict[str, int]:
    """Write every source's train and dev questions into ``folder``; returns the counts written."""
    report = MissingReport(on_missing, key="data.on_missing")
    writer = FolderWriter(Path(folder))
    try:
        for spec in sources:
            for split, limit in (("train", spec.max_train_queries), ("dev", spec.max_dev_queries)):
                if limit == 0:
                    continue
                for example in iter_qa_examples(spec.name, split, limit):
                    if usable(example, report):
                        writer.write(spec.name, split, example)
    finally:
        writer.close()
    report.notify()
    return writer.counts


def export_key(sources: list[SourceSpec], on_missing: str) -> str:
    settings = {"sources": [asdict(s) for s in sources], "on_missing": on_missing, "version": EXPORT_VERSION}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


def cached_export(specs: list[str | dict[str, Any]], on_missing: str = "error") -> Path:
    """The cached BEIR folder of ``specs`` (built once, atomically; reused while its files are intact)."""
    sources = [SourceSpec.parse(spec) for spec in specs]
    if not sources:
        raise ValueError("data.hub_sources is empty: name at least one of " + ", ".join(QA_TABLES))
    target = cache_root() / "hub_data" / export_key(sources, on_missing)
    return build_dir_atomically(target, lambda tmp: export_sources(sources, tmp, on_missing))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write hub QA sources as a local BEIR folder.")
    parser.add_argument("sources", nargs="+", choices=sorted(QA_TABLES))
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (must not exist)")
    parser.add_argument("--max-train-queries", type=int, default=None)
    parser.add_argument("--max-dev-queries", type=int, default=500)
    parser.add_argument("--on-missing", choices=("error", "skip"), default="skip")
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists; choose a new folder")
    sources = [SourceSpec(name, args.max_train_queries, args.max_dev_queries) for name in args.sources]
    counts: dict[str, int] = {}
    build_dir_atomically(args.out, lambda tmp: counts.update(export_sources(sources, tmp, args.on_missing)))
    print(
        f"wrote {args.out}: {counts['train']:,} train / {counts['dev']:,} dev questions, {counts['documents']:,} passages"
    )


if __name__ == "__main__":
    main()
