"""Deterministic run directories: ``<root>/<experiment>/<hash of overrides>/<SLURM job id or "local">``.

Never a timestamp: every DDP rank and every SLURM requeue computes the same directory, while runs with
different overrides never share one. ``resume=<run dir>`` names an earlier run's directory instead, so a
new job (a manual resubmission after a failed requeue, a node failure or ``scancel``) continues that run.
A run directory remembers its resolved config, stored exactly once even when every rank of a job starts
at the same moment; resuming into it with a different config is refused with the list of differing keys.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import uuid
from pathlib import Path
from typing import Any

import yaml

IGNORED_OVERRIDE_PREFIXES = ("exp=", "hydra.", "output_root=")
# keys that say where and how a run starts, not what it computes: never compared with the stored config
START_ONLY_KEYS = ("resume", "output_root")


class ConfigMismatchError(RuntimeError):
    pass


SECRET_ENV_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.I)
SECRET_KEY_NAME = re.compile(
    r"(^|_)(api_?key|secret|password|passwd|credentials?)$|^(hf_|auth_|access_|api_)?token$", re.I
)


def secret_values() -> dict[str, str]:
    """Environment variables that look like credentials (``WANDB_API_KEY``, ``HF_TOKEN``, ...) and their values."""
    return {
        name: value
        for name, value in os.environ.items()
        if SECRET_ENV_NAME.search(name)
        and len(value) >= 8
        and not value.startswith(("/", "~", "."))  # not paths
    }


def check_no_secrets(config: dict[str, Any]) -> None:
    """Refuse a config that would write a credential into the run directory (config.yaml, hparams, checkpoints).

    Credentials are read by the libraries from the environment and never belong in a config.
    """
    from experiments.config_check import ConfigError

    secrets = secret_values()
    for key, value in flatten(config).items():
        leaf = key.rsplit(".", 1)[-1]
        if (
            SECRET_KEY_NAME.search(leaf)
            and value not in (None, "", False)
            and not isinstance(value, bool | dict)
        ):
            raise ConfigError(
                f"config key '{key}' holds a credential; set it in the environment instead (it is never written to the run directory)"
            )
        if isinstance(value, str):
            for name, secret in secrets.items():
                if secret in value:
                    raise ConfigError(
                        f"config key '{key}' contains the value of ${name}; credentials stay in the environment"
                    )


def overrides_hash(overrides: list[str]) -> str:
    kept = sorted(o for o in overrides if not o.lstrip("+~").startswith(IGNORED_OVERRIDE_PREFIXES))
    return hashlib.sha1("\n".join(kept).encode()).hexdigest()[:8]


def job_id() -> str:
    """The SLURM job id (array jobs: ``<array id>_<task id>``), the same across requeues; else ``local``."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID", "local")


def resume_override(overrides: list[str]) -> str | None:
    """The run directory named by a ``resume=<run dir>`` override; None for ``resume=true|false`` or none."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    ours = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] == "resume"]
    values = [o.value() for o in OverridesParser.create().parse_overrides(ours) if not o.is_delete()]
    return values[-1] if values and isinstance(values[-1], str) else None


def resumed_run_directory(value: str) -> Path:
    """The earlier run's directory named by ``resume=``; it must hold that run's ``config.yaml``."""
    from experiments.config_check import ConfigError

    path = Path(value).expanduser()
    if not (path / "config.yaml").is_file():
        raise ConfigError(
            f"resume={value}: {path} is not a run directory (no config.yaml in it); name the folder that "
            "holds the earlier run's config.yaml and checkpoints, e.g. runs/<exp>/<hash>/<job id>"
        )
    return path


def run_directory(output_root: str | Path, experiment: str, overrides: list[str]) -> Path:
    resumed = resume_override(overrides)
    if resumed is not None:
        return resumed_run_directory(resumed)
    return Path(output_root) / experiment / overrides_hash(overrides) / job_id()


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out if tree else {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): tree}


def label_use_of(stated: str, config: dict[str, Any]) -> str:
    """The label use an experiment declares (``meta.label_use``), unless the run's config switched labels on
    where the experiment declares none: a data set's ``use_labels=true`` (an LLM-supervised run made a label
    control), or LLM-Embedder's ``model.graded_order=positive_first`` (the labelled positive pinned first,
    the paper's hard labels). Then the labelled keys are named, so no table calls a labelled run label-free.
    A DREAM run overridden to ``model.candidates=mined`` no longer takes its groups from the dataset.
    """
    flat = flatten(config)
    switched = [f"{k}=true" for k, v in sorted(flat.items()) if k.endswith("use_labels") and v is True]
    if flat.get("model.graded_order") == "positive_first" and "model.teacher.reward" in flat:
        switched.append("model.graded_order=positive_first")
    if switched and stated.lower().startswith("none"):
        return f"labels ({', '.join(switched)})"
    if flat.get("model.candidates") == "mined" and DATASET_GROUPS in stated:
        return stated.replace(DATASET_GROUPS, "the candidates are mined from the corpus (no labels)")
    return stated


DATASET_GROUPS = "the candidate groups come from the dataset"


def candidates_of(stated: str, model: dict[str, Any]) -> str:
    """The candidates an experiment declares (``meta.candidates``), unless the run switched DREAM to
    ``model.candidates=mined``: then what was mined, and how (never "the set contains the gold ones")."""
    if model.get("candidates") != "mined" or "mined" in stated.lower():
        return stated
    if model.get("mine_with") == "bm25":
        miner = "BM25 (once)"
    else:
        miner = f"the current embedder (re-mined every {model.get('mine_every_n_steps')} steps)"
    order = "shuffled each step" if model.get("shuffle_mined", True) else "in the miner's rank order"
    return (
        f"top-{model.get('mined_k')} passages of the corpus mined by {miner}, {order}; label-free: the gold "
        "paragraph is never forced in (model.candidates=mined overrides the experiment's dataset groups)"
    )


def config_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    a, b = flatten(stored), flatten(current)
    return [
        f"{k}: stored {a.get(k, '<absent>')!r}, now {b.get(k, '<absent>')!r}"
        for k in sorted(a.keys() | b.keys())
        if a.get(k, "<absent>") != b.get(k, "<absent>") and k not in START_ONLY_KEYS
    ]


def store_config_once(path: Path, config: dict[str, Any]) -> bool:
    """Write ``config.yaml`` unless it exists; True when this process stored it.

    Every process writes a temporary file of its own and hard-links it into place: the link is atomic and
    fails when the file exists, so ranks starting together never see a partial file and exactly one
    stores it (the others compare theirs). Without hard links, an atomic rename of the process's own file.
    """
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=True))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links
        os.replace(tmp, path)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def check_or_store_config(run_dir: Path, config: dict[str, Any]) -> None:
    """Write ``config.yaml`` on first use; afterwards refuse a different config."""
    path = run_dir / "config.yaml"
    if not path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        if store_config_once(path, config):
            return
    check_stored_config(run_dir, config)


def check_stored_config(run_dir: Path, config: dict[str, Any]) -> bool:
    """Whether ``run_dir`` holds a ``config.yaml`` (read only; nothing is created); raise
    :class:`ConfigMismatchError` when it differs from ``config``."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return False
    stored = yaml.safe_load(path.read_text()) or {}
    differences = config_differences(stored, config)
    if differences:
        listing = "\n  ".join(differences[:20])
        raise ConfigMismatchError(
            f"run directory {run_dir} already holds a run with a different config; refusing to resume into it.\n"
            f"Differences:\n  {listing}\nUse a new output_root, delete the directory, or restore the config."
        )
    return True
