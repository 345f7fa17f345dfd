"""One configured LLM-Embedder task → its examples: which reader a ``(kind, source)`` pair uses.

``kind`` (default: the task's name) is the family: ``qa``, ``tool``, ``convsearch``, ``icl``, ``lrlm``,
``chat``. ``source`` is ``local`` (files on disk, the default), ``hub`` (``datasets`` from the Hugging Face
hub) or ``reference`` (the reference's own training files, :mod:`.reference_files`). The other keys of a
task's config are the reader's arguments. Under ``debug=tiny`` a non-local task reads its small local
sample instead, so every experiment smoke-runs offline.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from datamodules.beir import split_query_ids
from datamodules.llm_embedder_tasks.chat import chat_from_file, chat_from_hub
from datamodules.llm_embedder_tasks.convsearch import convsearch_from_file, convsearch_from_hub
from datamodules.llm_embedder_tasks.icl import icl_from_file, icl_from_hub
from datamodules.llm_embedder_tasks.long_context import long_context_from_files, long_context_from_hub
from datamodules.llm_embedder_tasks.qa import qa_from_candidates_file, qa_from_hub
from datamodules.llm_embedder_tasks.reference_files import reference_task
from datamodules.llm_embedder_tasks.task_example import TaskExample
from datamodules.llm_embedder_tasks.tool import tool_from_files, tool_from_hub
from datamodules.paths import PACKAGE_DIR, resolve_data_path

TASK_DATA = {
    "toolbench_example": PACKAGE_DIR / "data" / "toolbench_example",
    "qrecc_sample": PACKAGE_DIR / "fixtures" / "task_samples" / "qrecc_sample.jsonl",
    "icl_sample": PACKAGE_DIR / "fixtures" / "task_samples" / "icl_sample.jsonl",
    "msc_sample": PACKAGE_DIR / "fixtures" / "task_samples" / "msc_sample.jsonl",
    "coriolanus": PACKAGE_DIR / "fixtures" / "long_context" / "coriolanus_act1.txt",
}
CONTROL_KEYS = {"kind", "source", "weight", "group_size"}
TINY_LIMITS = {"qa": {"max_queries": 8}, "icl": {"max_queries": 8}, "lrlm": {"max_queries": 8}}
KINDS = ("qa", "tool", "convsearch", "icl", "lrlm", "chat")
SOURCES = ("local", "hub", "reference")


def resolve_task_path(path: str) -> Path:
    """A task-data alias (``toolbench_example``, ``qrecc_sample``, ``icl_sample``, ``msc_sample``,
    ``coriolanus``), a data alias (``hotpotqa``, ``tiny_hotpotqa``) or a local path."""
    return TASK_DATA.get(path) or resolve_data_path(path)


def local_qa(name: str, args: dict[str, Any], tiny: bool) -> list[TaskExample]:
    path = args.pop("path", "hotpotqa")
    folder = resolve_task_path("tiny_hotpotqa" if tiny else path)
    split = args.pop("split", "train")
    file = args.pop("file", "qa_candidates.jsonl")
    return qa_from_candidates_file(folder / file, split_query_ids(folder, split), task_name=name, **args)


def local_tool(name: str, args: dict[str, Any], tiny: bool) -> list[TaskExample]:
    folder = resolve_task_path(args.pop("path", "toolbench_example"))
    files = args.pop("files", None) or sorted(p.name for p in folder.glob("*.json"))
    return tool_from_files([folder / f for f in files], **args)


def local_file(reader: Callable[..., list[TaskExample]], default: str) -> Callable[..., list[TaskExample]]:
    def read(name: str, args: dict[str, Any], tiny: bool) -> list[TaskExample]:
        return reader(resolve_task_path(args.pop("path", default)), **args)

    return read


def local_lrlm(name: str, args: dict[str, Any], tiny: bool) -> list[TaskExample]:
    paths = args.pop("paths", ["coriolanus"])
    return long_context_from_files([resolve_task_path(p) for p in paths], **args)


def plain(reader: Callable[..., list[TaskExample]]) -> Callable[..., list[TaskExample]]:
    return lambda name, args, tiny: reader(**args)


def reference(name: str, args: dict[str, Any], tiny: bool) -> list[TaskExample]:
    return reference_task(**args)


READERS: dict[tuple[str, str], Callable[[str, dict[str, Any], bool], list[TaskExample]]] = {
    ("qa", "local"): local_qa,
    ("qa", "hub"): lambda name, args, tiny: qa_from_hub(task_name=name, **args),
    ("tool", "local"): local_tool,
    ("tool", "hub"): plain(tool_from_hub),
    ("convsearch", "local"): local_file(convsearch_from_file, "qrecc_sample"),
    ("convsearch", "hub"): plain(convsearch_from_hub),
    ("icl", "local"): local_file(icl_from_file, "icl_sample"),
    ("icl", "hub"): plain(icl_from_hub),
    ("lrlm", "local"): local_lrlm,
    ("lrlm", "hub"): plain(long_context_from_hub),
    ("chat", "local"): local_file(chat_from_file, "msc_sample"),
    ("chat", "hub"): plain(chat_from_hub),
    **{(kind, "reference"): reference for kind in KINDS},
}


def tiny_arguments(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The local-sample arguments a non-local task uses under ``debug=tiny``."""
    args = dict(TINY_LIMITS.get(kind, {}))
    group_size = int(spec.get("group_size", 5))
    if kind == "chat":
        args["min_history"] = group_size
    elif kind != "convsearch":
        args["num_candidates"] = group_size
    return args


def load_task_examples(name: str, spec: dict[str, Any], tiny: bool = False) -> list[TaskExample]:
    """Examples of one configured task (see the module docstring)."""
    kind = spec.get("kind", name)
    source = spec.get("source", "local")
    args = {k: v for k, v in spec.items() if k not in CONTROL_KEYS}
    if tiny and source != "local":  # debug=tiny: hub and reference tasks fall back to their local sample
        source, args = "local", tiny_arguments(kind, spec)
    if source == "reference":
        args.setdefault("kind", kind)
    reader = READERS.get((kind, source))
    if reader is None:
        raise ValueError(
            f"data.tasks.{name}: unknown kind '{kind}' or source '{source}' (kinds: {', '.join(KINDS)}; "
            f"sources: {', '.join(SOURCES)})"
        )
    try:
        return reader(name, args, tiny)
    except TypeError as error:
        raise ValueError(
            f"data.tasks.{name}: bad option for a '{kind}' task from '{source}': {error}"
        ) from None
