"""Sweeps that report: a W&B agent's trial logs its sweep metric (``val/ndcg@10``) to the trial's W&B run,
and ``logger.wandb.mode=auto`` counts a ``wandb login`` (netrc) as online."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from experiments.loggers import resolve_wandb_mode
from experiments.sweep import SWEEP_DIR
from tests.reliability_helpers import REPO, only_run_dir, subprocess_env

# ---- netrc login -------------------------------------------------------------------------------------------


def netrc_file(tmp_path: Path, host: str) -> Path:
    path = tmp_path / "netrc"
    path.write_text(f"machine {host}\n  login user\n  password {'k' * 40}\n")
    path.chmod(0o600)
    return path


def test_a_wandb_login_in_netrc_makes_auto_online(tmp_path):
    login = str(netrc_file(tmp_path, "api.wandb.ai"))
    assert resolve_wandb_mode("auto", {"NETRC": login}) == "online"
    assert resolve_wandb_mode("auto", {"HOME": str(tmp_path), "NETRC": login}) == "online"
    (tmp_path / ".netrc").write_text((tmp_path / "netrc").read_text())  # where `wandb login` writes
    assert resolve_wandb_mode("auto", {"HOME": str(tmp_path)}) == "online"


def test_auto_stays_offline_without_a_login_or_when_told(tmp_path):
    login = str(netrc_file(tmp_path, "api.wandb.ai"))
    assert resolve_wandb_mode("auto", {"HOME": str(tmp_path / "nobody")}) == "offline"
    assert resolve_wandb_mode("auto", {"NETRC": login, "WANDB_MODE": "offline"}) == "offline"
    assert resolve_wandb_mode("auto", {"NETRC": str(netrc_file(tmp_path, "example.com"))}) == "offline"
    (tmp_path / "broken").write_text("machine\n")
    assert resolve_wandb_mode("auto", {"NETRC": str(tmp_path / "broken")}) == "offline"
    assert resolve_wandb_mode("auto", {"WANDB_API_KEY": "x" * 40, "HOME": str(tmp_path)}) == "online"
    assert resolve_wandb_mode("offline", {"NETRC": login}) == "offline"  # an explicit mode is kept


def test_a_self_hosted_wandb_login_counts_for_its_host(tmp_path):
    login = str(netrc_file(tmp_path, "wandb.example.org"))
    environ = {"NETRC": login, "WANDB_BASE_URL": "https://wandb.example.org"}
    assert resolve_wandb_mode("auto", environ) == "online"
    assert resolve_wandb_mode("auto", {"NETRC": login}) == "offline"  # not a login for api.wandb.ai


# ---- a trial, offline --------------------------------------------------------------------------------------


def wandb_records(path: Path):
    """The protobuf records of a ``.wandb`` run file (a LevelDB-style log of 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    data, block, header = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    position, pending = header, b""
    while position + header <= len(data):
        if block - position % block < header:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + header])
        chunk = data[position + header : position + header + length]
        position += header + length
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL/FIRST start a record
        if kind in (1, 4):  # FULL/LAST end it
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def summary_of(path: Path) -> dict[str, str]:
    summary: dict[str, str] = {}
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "summary":
            summary.update(
                {item.key or "/".join(item.nested_key): item.value_json for item in record.summary.update}
            )
    return summary


def test_a_sweep_trial_logs_the_sweep_metric_to_its_wandb_run(tmp_path):
    metric = yaml.safe_load((SWEEP_DIR / "contrastive_lr.yaml").read_text())["metric"]["name"]
    assert metric == "val/ndcg@10"
    trial = [
        sys.executable,
        "-m",
        "experiments.sweep",
        "trial",  # what the agent runs; no logger override: the trial must choose W&B itself
        "exp=default",
        "debug=tiny",
        "eval_before_training=false",
        "callbacks.export=null",
        "callbacks.model_checkpoint=null",
        "trainer.enable_progress_bar=false",
        "threads=1",
        f"output_root={tmp_path}",
    ]
    env = subprocess_env({"WANDB_MODE": "offline", "WANDB_RUN_ID": "trial-7", "WANDB_SILENT": "true"})
    with subprocess.Popen(
        trial, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as process:
        try:
            _, stderr = process.communicate(timeout=900)
        finally:
            if process.poll() is None:  # the trial and the training it started
                os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    (run_file,) = run_dir.glob("wandb/offline-run-*-trial-7/run-trial-7.wandb")  # the agent's run id
    summary = summary_of(run_file)
    assert metric in summary, f"the W&B run's summary has no {metric}: {sorted(summary)}"
    after = json.loads((run_dir / "results.json").read_text())["metrics"]["after"]
    assert float(summary[metric]) == pytest.approx(after["ndcg@10"])


def test_a_sweep_that_would_stop_trials_reporting_is_refused(tmp_path):
    from experiments.sweep import SweepConfigError, validate_sweep

    config = yaml.safe_load((SWEEP_DIR / "contrastive_lr.yaml").read_text())
    config["parameters"]["logger"] = {"values": ["wandb", "csv"]}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    with pytest.raises(SweepConfigError, match="parameter 'logger' must stay wandb"):
        validate_sweep(bad)
