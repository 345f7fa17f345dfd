"""Scale-out configuration without a cluster: trainer configs and their hardware checks, FSDP units,
the rendered sbatch script, and W&B sweep files against the Hydra config (FSDP training itself: test_scale_fsdp.py)."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.plugins.precision import FSDPPrecision

from experiments import CONFIG_DIR
from experiments.slurm import main as slurm_main
from experiments.slurm import parse as parse_slurm_args
from experiments.slurm import render_agent, render_training
from experiments.sweep import SWEEP_DIR, SweepConfigError, trial_command, validate_sweep
from experiments.trainer_checks import TrainerConfigError, check_trainer_options
from lightning_modules.base import RetrieverModule
from lightning_modules.fsdp import (
    RetrieverFSDPStrategy,
    checkpointed_layers,
    fsdp_units,
    mixed_units,
    transformer_layers,
)
from lightning_modules.fsdp_precision import RetrieverFSDPPrecision


def composed(overrides: list[str]):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


# ---- trainer configs and hardware checks -----------------------------------------------------------------
@pytest.mark.parametrize("name", ["gpu", "ddp", "fsdp", "ddp_spawn", "ddp_cpu", "fsdp_cpu"])
def test_every_trainer_config_composes_with_the_checked_factory(name):
    cfg = composed([f"trainer={name}"])
    assert cfg.trainer._target_ == "experiments.trainer_checks.checked_trainer"
    assert cfg.trainer.max_steps == 36  # the experiment's budget still applies


def test_checked_trainer_exposes_the_trainer_keys_to_config_checks():
    import inspect

    import lightning as L

    from experiments.trainer_checks import checked_trainer

    assert (
        inspect.signature(checked_trainer).parameters.keys() == inspect.signature(L.Trainer).parameters.keys()
    )


def test_lightnings_own_fsdp_on_cpu_is_refused_and_fsdp_cpu_is_built():
    """Lightning's ``FSDPStrategy`` refuses non-CUDA devices; the project's strategy runs on CPU over gloo."""
    with pytest.raises(TrainerConfigError, match="trainer.strategy=fsdp needs CUDA GPUs.*trainer=fsdp_cpu"):
        check_trainer_options(accelerator="cpu", devices=2, strategy="fsdp", cuda_devices=0)
    cfg = composed(["trainer=fsdp_cpu"])
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert isinstance(trainer.strategy, RetrieverFSDPStrategy)
    assert trainer.strategy.root_device.type == "cpu" and trainer.num_devices == 2
    assert isinstance(trainer.strategy.precision_plugin, RetrieverFSDPPrecision)


def test_hardware_checks_name_the_key_and_the_fix():
    with pytest.raises(TrainerConfigError, match="trainer.accelerator=gpu but this machine has no CUDA GPU"):
        check_trainer_options(accelerator="gpu", devices=1, cuda_devices=0)
    with pytest.raises(
        TrainerConfigError, match="trainer.devices=8 asks for 8 GPUs per node but 4 are visible"
    ):
        check_trainer_options(accelerator="gpu", devices=8, cuda_devices=4)
    with pytest.raises(TrainerConfigError, match="bf16-mixed on a CPU without native bf16"):
        check_trainer_options(accelerator="cpu", precision="bf16-mixed", cuda_devices=0, cpu_bf16=False)
    check_trainer_options(accelerator="cpu", precision="bf16-mixed", cuda_devices=0, cpu_bf16=True)
    check_trainer_options(
        accelerator="gpu", devices="auto", strategy="fsdp", precision="bf16-mixed", cuda_devices=8
    )
    check_trainer_options(accelerator="cpu", devices=2, strategy="ddp_spawn", cuda_devices=0)


def test_fsdp_precision_autocasts_on_the_device_and_casts_no_parameter_or_buffer():
    """Lightning's plugin would cast every parameter *and buffer* (RoPE ``inv_freq``) to bf16 under
    ``bf16-mixed``, and the whole model to fp32 under ``32-true``; and it refuses clipping by norm."""
    strategy = RetrieverFSDPStrategy()
    strategy.precision_plugin = FSDPPrecision("bf16-mixed")  # what Lightning's connector hands over
    plugin = strategy.precision_plugin
    assert isinstance(plugin, RetrieverFSDPPrecision) and plugin.mixed_precision_config is None
    plugin.device_type = "cpu"
    with plugin.forward_context():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    frozen = torch.nn.Linear(2, 2).to(torch.bfloat16)
    assert RetrieverFSDPPrecision("32-true").convert_module(frozen).weight.dtype == torch.bfloat16
    assert FSDPPrecision("32-true").convert_module(frozen).weight.dtype == torch.float32  # Lightning's
    with pytest.raises(RuntimeError, match="before the FSDP strategy wrapped the model"):
        plugin.clip_grad_by_norm(None, 1.0)
    with pytest.raises(ValueError, match="activation_checkpointing_layers must be one of"):
        RetrieverFSDPStrategy(activation_checkpointing_layers="half")


# ---- FSDP units --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def frozen_lm_and_lora_embedder():
    from lightning_modules.models.registry import resolve_model_path

    path = resolve_model_path("tiny-llama")
    return RetrieverModule(
        embedder={"name_or_path": path, "pooling": "last", "lora": {"r": 4}}, frozen_lm={"name_or_path": path}
    )


def test_fsdp_units_separate_frozen_lm_layers_from_embedder_layers(frozen_lm_and_lora_embedder):
    module = frozen_lm_and_lora_embedder
    units = fsdp_units(module)
    layers = transformer_layers(module)
    frozen = [n for n in layers if n.startswith("frozen_lm.")]
    trainable = [n for n in layers if n.startswith("embedder.")]
    assert len(frozen) == 3 and len(trainable) == 3  # the tiny llama has 3 decoder layers
    assert set(layers) <= set(units)
    adapters = [n for n in units if "lora_" in n]
    assert adapters and all(n.startswith("embedder.") for n in adapters)
    # every unit's own parameters are all frozen or all trainable
    assert mixed_units(module, set(units)) == []
    # without the adapter units, each embedder layer would mix frozen base weights and LoRA weights
    assert sorted(mixed_units(module, set(layers))) == sorted(trainable)


def test_activation_checkpointing_choices(frozen_lm_and_lora_embedder):
    module = frozen_lm_and_lora_embedder
    assert checkpointed_layers(module, "none") == {}
    assert all(n.startswith("embedder.") for n in checkpointed_layers(module, "embedder"))
    assert all(n.startswith("frozen_lm.") for n in checkpointed_layers(module, "frozen_lm"))
    assert len(checkpointed_layers(module, "all")) == 6
    with pytest.raises(ValueError, match="activation_checkpointing must be one of"):
        checkpointed_layers(module, "some")


# ---- SLURM -------------------------------------------------------------------------------------------------
def sbatch_directives(script: str) -> dict[str, str]:
    directives = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH "):
            flag = line.split(maxsplit=1)[1]
            key, _, value = flag.partition("=")
            directives[key] = value
    return directives


def srun_overrides(script: str) -> list[str]:
    (line,) = [line for line in script.splitlines() if line.startswith("srun ")]
    tokens = shlex.split(line)
    return tokens[tokens.index("experiments.train") + 1 :]


@pytest.mark.parametrize(("nodes", "gpus", "trainer"), [(2, 8, "fsdp"), (1, 4, "ddp")])
def test_rendered_sbatch_is_valid_for_exp_nodes_gpus(tmp_path, nodes, gpus, trainer):
    args = parse_slurm_args(
        [
            "train",
            "default",
            "--nodes",
            str(nodes),
            "--gpus",
            str(gpus),
            "--trainer",
            trainer,
            "--output-root",
            str(tmp_path),
            "--partition",
            "gpu",
            "--",
            "trainer.max_steps=5",
        ]
    )
    script = render_training(args)
    directives = sbatch_directives(script)
    assert directives["--nodes"] == str(nodes)
    assert directives["--ntasks-per-node"] == str(gpus) == directives["--gpus-per-node"]
    assert directives["--signal"] == "SIGUSR1@90"
    assert "--requeue" in directives and directives["--partition"] == "gpu"
    assert directives["--output"].startswith(str(tmp_path))
    assert "@@" not in script
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    overrides = srun_overrides(script)
    cfg = composed(overrides)  # every rank composes exactly this
    assert cfg.name == "default"
    assert cfg.trainer.num_nodes == nodes and cfg.trainer.devices == gpus and cfg.trainer.max_steps == 5
    expected = (
        "lightning_modules.fsdp.RetrieverFSDPStrategy"
        if trainer == "fsdp"
        else "lightning.pytorch.strategies.DDPStrategy"
    )
    assert cfg.trainer.strategy._target_ == expected
    assert cfg.logger.wandb is not None  # the W&B run id is fixed by the run directory


def test_rendered_sbatch_for_cpu_tasks_asks_for_no_gpu(tmp_path):
    """TRAINER=ddp_cpu: the same template, one CPU process per task, no GPU request (the SLURM CI cluster)."""
    args = parse_slurm_args(
        ["train", "default", "--nodes=1", "--gpus=2", "--trainer=ddp_cpu", f"--output-root={tmp_path}"]
    )
    script = render_training(args)
    directives = sbatch_directives(script)
    assert "--gpus-per-node" not in directives and directives["--ntasks-per-node"] == "2"
    assert directives["--signal"] == "SIGUSR1@90" and "--requeue" in directives
    assert "\n\n#SBATCH" not in script and "@@" not in script
    cfg = composed(srun_overrides(script))  # cpu.yaml has no num_nodes: ++ adds it
    assert cfg.trainer.num_nodes == 1 and cfg.trainer.devices == 2 and cfg.trainer.accelerator == "cpu"
    assert cfg.trainer.strategy.process_group_backend == "gloo"
    with pytest.raises(SystemExit, match="trainer must be one of ddp, fsdp, ddp_cpu.* got 'cpu'"):
        slurm_main(["train", "default", "--trainer=cpu", "--dry"])


def test_slurm_rejects_an_unknown_experiment_and_bad_counts(capsys):
    with pytest.raises(SystemExit, match="unknown experiment 'no_such_exp'.*available: .*default"):
        slurm_main(["train", "no_such_exp", "--nodes", "2", "--gpus", "8", "--dry"])
    with pytest.raises(SystemExit, match="NODES must be a positive integer, got 0"):
        slurm_main(["train", "default", "--nodes", "0", "--gpus", "8", "--dry"])
    slurm_main(["train", "default", "--nodes", "2", "--gpus", "8", "--dry", "--", "trainer.max_steps=9"])
    printed = capsys.readouterr().out
    assert re.search(
        r"^srun .* exp=default .*trainer.num_nodes=2 trainer.devices=8 .*trainer.max_steps=9$", printed, re.M
    )


def test_rendered_agent_script_runs_trials_with_srun():
    args = parse_slurm_args(["agent", "me/proj/abc123", "--nodes", "1", "--gpus", "4", "--count", "3"])
    script = render_agent(args)
    assert sbatch_directives(script)["--ntasks-per-node"] == "4"
    assert 'LSR_TRIAL_LAUNCHER="srun --kill-on-bad-exit=1"' in script
    assert "experiments.sweep agent me/proj/abc123 --count 3" in script


# ---- W&B sweeps --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(SWEEP_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_sweep_file_is_accepted_by_the_config(path):
    config = validate_sweep(path)
    assert config["metric"]["name"].startswith("val/")


def test_a_sweep_parameter_missing_from_the_config_is_named(tmp_path):
    text = (SWEEP_DIR / "contrastive_lr.yaml").read_text().replace("model.temperature", "model.temprature")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(SweepConfigError, match=r"parameter 'model.temprature=0.02' is not accepted"):
        validate_sweep(bad)
    bad.write_text((SWEEP_DIR / "contrastive_lr.yaml").read_text().replace("val/ndcg@10", "val/ndcg@1000"))
    with pytest.raises(SweepConfigError, match="metric.name 'val/ndcg@1000' is not a logged key"):
        validate_sweep(bad)


def test_trial_command_passes_parameters_as_overrides():
    command = trial_command(
        ["exp=default", "model.optimizer.lr=3e-05"],
        {
            "LSR_TRIAL_LAUNCHER": "srun --kill-on-bad-exit=1",
            "LSR_TRIAL_OVERRIDES": "trainer=ddp trainer.devices=4",
        },
    )
    assert command[:2] == ["srun", "--kill-on-bad-exit=1"]
    assert command[3:] == [
        "-m",
        "experiments.train",
        "logger=wandb",  # the sweep reads the trial's metric from its W&B run
        "exp=default",
        "model.optimizer.lr=3e-05",
        "trainer=ddp",
        "trainer.devices=4",
    ]
    assert trial_command(["exp=default"], {})[1:] == [
        "-m",
        "experiments.train",
        "logger=wandb",
        "exp=default",
    ]
    assert "logger=wandb" not in trial_command(["exp=default", "logger=csv"], {})  # an explicit choice stays


# ---- multi-task homogeneous batches across ranks ---------------------------------------------------------
def test_homogeneous_batches_never_mix_tasks_across_ranks():
    """LLM-Embedder's data under a 2-rank trainer: each step, both ranks get the same task, different queries."""
    from types import SimpleNamespace

    cfg = composed(["exp=llm_embedder_tiny", "debug=tiny", "trainer=ddp"])
    # the sampler shards by rank itself: Lightning must not wrap it in a DistributedSampler
    assert cfg.trainer.use_distributed_sampler is False
    data = instantiate(cfg.data, _convert_="all")
    data.setup("fit")
    per_rank = []
    for rank in range(2):
        data.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        per_rank.append([(batch.task, batch.query_ids) for batch in data.train_dataloader()])
    assert len(per_rank[0]) == len(per_rank[1]) > 0
    for (task0, ids0), (task1, ids1) in zip(*per_rank):
        assert task0 == task1
        assert len(ids0) == len(ids1) == cfg.data.batch_size
        assert not set(ids0) & set(ids1), "the ranks of one step must hold different queries"
