"""The one door to the Hugging Face hub for data: every table a loader reads, and how it is loaded.

Every table is a parquet/json repository or the hub's automatic parquet conversion (``refs/convert/parquet``)
read through a packaged builder; no loading script ever runs (``datasets`` >= 4 refuses them: "Dataset
scripts are no longer supported"). The repositories, configs, splits and columns were checked against the
stored dataset cards (docs/data.md lists them with their sources). Large tables are streamed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from datamodules.errors import DataFormatError

CONVERT_BRANCH = "refs%2Fconvert%2Fparquet"  # the hub's parquet conversion of any repository
# repositories whose main branch is a loading script: name -> what to use instead
SCRIPT_REPOSITORIES = {
    "Tevatron/wikipedia-nq": "the 'nq' source (its refs/convert/parquet files)",
    "deepmind/pg19": "emozilla/pg19 (parquet)",
    "pg19": "emozilla/pg19 (parquet)",
    "hotpot_qa": "the 'hotpotqa' source (hotpotqa/hotpot_qa refs/convert/parquet files)",
}


@dataclass(frozen=True)
class HubTable:
    """One ``datasets.load_dataset`` call: a repository (or a packaged builder with ``data_files``)."""

    path: str
    name: str | None = None
    split: str = "train"
    data_files: str | None = None
    revision: str | None = None

    def describe(self) -> str:
        where = self.data_files or f"{self.path}{f' ({self.name})' if self.name else ''}"
        return f"{where} split {self.split}"


def converted_parquet(repo: str, config: str, split: str) -> HubTable:
    """A split of the hub's automatic parquet conversion (``<config>/<split>/*.parquet`` on that branch)."""
    files = f"hf://datasets/{repo}@{CONVERT_BRANCH}/{config}/{split}/*.parquet"
    return HubTable("parquet", split="train", data_files=files)


def json_files(repo: str, pattern: str) -> HubTable:
    """JSON-lines files of a repository, read with the packaged ``json`` builder."""
    return HubTable("json", split="train", data_files=f"hf://datasets/{repo}/{pattern}")


def check_repository(repo: str) -> None:
    """Refuse a loading-script repository by name, saying what to use instead."""
    owner = repo.split("/")[0]
    if repo in SCRIPT_REPOSITORIES or owner == "BeIR":
        instead = (
            SCRIPT_REPOSITORIES.get(repo) or f"mteb/{repo.split('/')[-1]} (the same BEIR data as parquet)"
        )
        raise DataFormatError(
            repo,
            f"is a loading-script repository, which datasets >= 4 no longer runs; use {instead}",
        )


def hub_offline() -> bool:
    return os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"


def load_table(table: HubTable, streaming: bool = False):
    """``datasets.load_dataset`` for ``table``; an unreachable hub becomes one message saying what to do."""
    import datasets

    if table.data_files is None:
        check_repository(table.path)
    kwargs: dict[str, Any] = {"split": table.split}
    for key in ("name", "data_files", "revision"):
        if getattr(table, key) is not None:
            kwargs[key] = getattr(table, key)
    if streaming:
        kwargs["streaming"] = True
    try:
        return datasets.load_dataset(table.path, **kwargs)
    except Exception as err:  # datasets / huggingface_hub raise many types for an unreachable hub
        reason = "offline mode is set" if hub_offline() else f"{type(err).__name__}: {str(err)[:200]}"
        raise DataFormatError(
            table.path,
            f"could not load {table.describe()} from the hub ({reason}). Without network access, build the "
            "data elsewhere (python -m datamodules.hub_export ... --out DIR) and point data.path at the folder.",
        ) from err


def iter_rows(table: HubTable, streaming: bool = False, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """The rows of ``table`` as dicts, at most ``limit`` (streaming stops reading there)."""
    for index, row in enumerate(load_table(table, streaming=streaming)):
        if limit is not None and index >= limit:
            return
        yield dict(row)
