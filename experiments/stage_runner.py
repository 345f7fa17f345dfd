"""Staged pipelines: where a paper has stages, the experiment runs them in order and caches each (docs/stages.md).

A run lists its stages under the root key ``stages`` (in order; a stage may use an earlier one's output)
and refers to a stage's output folder with the ``${stage:<name>}`` interpolation::

    stages:
      mntp:    {kind: llm2vec_mntp, label_use: none, model: smollm2-135m-instruct, ...}
      teacher: {kind: llm2vec_simcse, label_use: none, model: "${stage:mntp}", ...}
    model:
      teacher: {name_or_path: "${stage:teacher}", attention: bidirectional, ...}

``${stage:x}`` is ``<cache root>/stages/[tiny-]<kind>-<key>``: ``key`` hashes the stage's resolved settings
(``label_use`` aside; upstream outputs by their key, not the cache location), the ``debug=tiny`` flag and
the kind's builder version, so a folder is reused exactly when its recipe is unchanged.
:func:`run_stages` (called by experiments/train.py before the model is built) builds every stage the
config uses that is not on disk yet, in order, and reuses the others; a stage no key refers to (e.g. after
``model.frozen_lm.name_or_path=<another LM>``) is reported as unused and not built.

Concurrency and DDP: folders are written by :func:`retrieval.cache.build_dir_atomically` (a temporary
folder, an atomic rename, a file lock). Under Lightning's DDP launcher rank 0 reaches ``run_stages`` before
the other ranks exist, so they find the stages built; when all ranks start together (``srun``), the first
to take a stage's lock builds it on one device while the others wait on the lock, then reuse it. Every
rank thus loads the same folder. Multi-node runs need ``LSR_CACHE_DIR`` on a shared file system.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from retrieval.cache import build_dir_atomically, cache_root, folder_problem, write_json_atomically

UNKEYED = ("label_use",)  # describes the stage; does not change what it builds
REFERENCE = re.compile(r"\$\{stage:\s*([^}\s]+)\s*\}")


def stage_marker() -> str:
    """The marker file of a stage output. Imported when used: this module is loaded with ``experiments``
    (for the ``${stage:...}`` resolver), before entry points set the hub offline, so it must not import
    the model stack (``lightning_modules.models`` loads transformers and huggingface_hub)."""
    from lightning_modules.models.registry import STAGE_MARKER

    return STAGE_MARKER


def stage_root() -> Path:
    return cache_root() / "stages"


def stage_names(cfg: DictConfig) -> list[str]:
    stages = cfg.get("stages")
    return [str(k) for k in stages] if isinstance(stages, DictConfig) else []


def stage_settings(cfg: DictConfig, name: str) -> dict[str, Any]:
    """The stage's resolved settings (upstream ``${stage:…}`` references become output paths)."""
    from experiments.config_check import ConfigError

    if name not in stage_names(cfg):
        defined = ", ".join(stage_names(cfg)) or "none"
        raise ConfigError(f"${{stage:{name}}}: no stage '{name}' under 'stages' (defined: {defined})")
    return OmegaConf.to_container(cfg.stages[name], resolve=True)


def portable(value: Any) -> Any:
    """``value`` with stage output paths written relative to the stage root (keys survive a moved cache)."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    if isinstance(value, str):
        return value.replace(str(stage_root()), "<stages>")
    return value


def stage_key(cfg: DictConfig, name: str) -> str:
    from experiments.stage_builders import KINDS

    settings = stage_settings(cfg, name)
    kind = settings.get("kind")
    payload = {
        "settings": portable({k: v for k, v in settings.items() if k not in UNKEYED}),
        "tiny_models": bool(cfg.get("tiny_models")),
        "builder_version": KINDS[kind].version if kind in KINDS else None,
    }
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def stage_path(cfg: DictConfig, name: str) -> Path:
    """The output folder of stage ``name`` (whether or not it exists yet)."""
    kind = stage_settings(cfg, name).get("kind")
    prefix = (
        "tiny-" if cfg.get("tiny_models") else ""
    )  # tiny outputs load their word-level tokenizer as saved
    return stage_root() / f"{prefix}{kind}-{stage_key(cfg, name)}"


def _stage_output(name: str, *, _root_: DictConfig) -> str:
    return str(stage_path(_root_, name))


OmegaConf.register_new_resolver("stage", _stage_output, replace=True)


# ---- checks (experiments/config_check.py calls check_stages before anything runs) -------------------------
def check_stages(cfg: DictConfig) -> None:
    """Unknown kinds or keys, a missing ``label_use``, and references to undefined or later stages."""
    from experiments.config_check import ConfigError, unknown_key_message
    from experiments.stage_builders import KINDS, settings_fields

    names = stage_names(cfg)
    raw = OmegaConf.to_container(cfg, resolve=False)
    for position, name in enumerate(names):
        node = raw["stages"][name]
        if not isinstance(node, dict):
            raise ConfigError(f"stages.{name} must be a section with a 'kind', got {node!r}")
        kind = node.get("kind")
        if kind not in KINDS:
            raise ConfigError(
                f"stages.{name}.kind: unknown stage kind '{kind}' (choose from: {', '.join(KINDS)})"
            )
        fields = settings_fields(kind)
        for key in node:
            if key not in fields:
                raise ConfigError(unknown_key_message(f"stages.{name}", str(key), sorted(fields)))
        required = [
            f for f, spec in fields.items() if spec.default is spec.default_factory is dataclasses.MISSING
        ]
        missing = [f for f in required if f not in node]
        if missing:
            raise ConfigError(f"stages.{name} ({kind}) needs: {', '.join(missing)}")
        for reference in REFERENCE.findall(json.dumps(node)):
            if reference not in names[:position]:
                raise ConfigError(
                    f"stages.{name} uses ${{stage:{reference}}}, which is not an earlier stage "
                    f"(stages run in order: {', '.join(names)})"
                )
    outside = json.dumps({k: v for k, v in raw.items() if k != "stages"}, default=str)
    for reference in REFERENCE.findall(outside):
        if reference not in names:
            raise ConfigError(
                f"${{stage:{reference}}}: no stage '{reference}' under 'stages' (defined: {', '.join(names) or 'none'})"
            )


def stage_model_references(cfg: DictConfig) -> list[tuple[str, str, Any]]:
    """``(key, name, section)`` of each stage's base model (``model`` / ``base``), for the model-file check."""
    references = []
    for name in stage_names(cfg):
        node = cfg.stages[name]
        for key in ("model", "base"):
            if isinstance(node.get(key), str):
                references.append((f"stages.{name}.{key}", node[key], node))
    return references


def is_planned_output(name: str) -> bool:
    """Whether a model name is a stage output path (it may not exist before the stages run)."""
    return str(Path(name).expanduser()).startswith(str(stage_root()) + "/")


# ---- running ----------------------------------------------------------------------------------------------
@dataclass
class StageRecord:
    """One stage of a run, as results.json records it."""

    name: str
    kind: str
    status: str  # built | reused | unused
    label_use: str
    key: str | None = None
    path: str | None = None
    seconds: float = 0.0  # this run's time on the stage (build, or the reuse check)
    build_seconds: float | None = None  # the build's wall time (when reused: the original build's)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageReport:
    records: list[StageRecord]

    def results_fields(self, results: dict[str, Any]) -> dict[str, Any]:
        """``stages`` for results.json, and ``label_use`` led by the label use of each used stage that uses
        labels (first, so a one-phrase summary such as the report's never drops it)."""
        if not self.records:
            return {}
        fields: dict[str, Any] = {"stages": [asdict(r) for r in self.records]}
        labelled = [
            f"stage {r.name}: {r.label_use}"
            for r in self.records
            if r.status != "unused" and not r.label_use.lower().startswith("none")
        ]
        if labelled and "label_use" in results:
            fields["label_use"] = "; ".join([*labelled, str(results["label_use"])])
        return fields


def string_leaves(tree: Any) -> list[str]:
    if isinstance(tree, dict):
        return [leaf for value in tree.values() for leaf in string_leaves(value)]
    if isinstance(tree, list):
        return [leaf for value in tree for leaf in string_leaves(value)]
    return [tree] if isinstance(tree, str) else []


def used_stages(cfg: DictConfig) -> list[str]:
    """The stages whose output a key outside ``stages`` uses, with the earlier stages they build on."""
    names = stage_names(cfg)
    paths = {name: str(stage_path(cfg, name)) for name in names}
    resolved = OmegaConf.to_container(cfg, resolve=True)

    def referenced(tree: Any) -> set[str]:
        leaves = string_leaves(tree)
        return {name for name, path in paths.items() if any(path in leaf for leaf in leaves)}

    used = referenced({k: v for k, v in resolved.items() if k != "stages"})
    for name in reversed(names):  # references point to earlier stages only (check_stages)
        if name in used:
            used |= referenced(resolved["stages"][name])
    return [name for name in names if name in used]


def run_stages(cfg: DictConfig) -> StageReport:
    """Build the stages this run uses that are not on disk, in order; reuse the others. See the module doc."""
    from experiments.stage_builders import StageContext

    context = StageContext(
        accelerator=str(cfg.trainer.get("accelerator", "auto")),
        tiny=bool(cfg.get("tiny_models")),
        progress=bool(cfg.trainer.get("enable_progress_bar", False)),
    )
    used = used_stages(cfg)
    records = []
    for name in stage_names(cfg):
        if name in used:
            records.append(run_stage(cfg, name, context))
        else:
            label_use = str(cfg.stages[name].get("label_use", ""))
            records.append(StageRecord(name, str(cfg.stages[name].kind), "unused", label_use))
            print(
                f"stage {name}: unused (no config key refers to ${{stage:{name}}}); not built",
                file=sys.stderr,
            )
    return StageReport(records)


def run_stage(cfg: DictConfig, name: str, context: Any) -> StageRecord:
    from experiments.stage_builders import make_settings

    settings = stage_settings(cfg, name)
    key, path = stage_key(cfg, name), stage_path(cfg, name)
    record = StageRecord(name, settings["kind"], "reused", settings["label_use"], key, str(path))
    start = time.perf_counter()
    if folder_problem(path) is not None:
        print(f"stage {name}: building {path}", file=sys.stderr, flush=True)

        def build(tmp: Path) -> None:
            record.status = "built"
            values = make_settings(settings["kind"], settings, context.tiny)
            from experiments.stage_builders import KINDS

            metrics = KINDS[settings["kind"]].build(name, values, tmp, context)
            marker = {
                "stage": name,
                "kind": settings["kind"],
                "key": key,
                "label_use": settings["label_use"],
                "settings": portable(asdict(values)),
                "tiny_models": context.tiny,
                "build_seconds": round(time.perf_counter() - start, 2),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "metrics": metrics,
            }
            write_json_atomically(tmp / stage_marker(), marker)

        build_dir_atomically(path, build)
    record.seconds = round(time.perf_counter() - start, 2)
    marker = json.loads((path / stage_marker()).read_text())
    record.build_seconds, record.metrics = marker.get("build_seconds"), marker.get("metrics", {})
    verb = "built" if record.status == "built" else "reused"
    print(f"stage {name}: {verb} {path} ({record.seconds:.1f} s)", file=sys.stderr, flush=True)
    return record
