"""Render (and submit) the SLURM batch scripts in ``slurm/`` for a training run or a W&B sweep agent.

``python -m experiments.slurm train EXP --nodes 2 --gpus 8 [--trainer fsdp] [--dry] [-- key=value ...]``
(``make slurm EXP=... NODES=... GPUS=... [DRY=1]``) writes ``slurm/generated/<exp>-<N>x<G>.sbatch`` and
submits it with ``sbatch`` unless ``--dry``, which prints it instead. The script runs one task per GPU
under ``srun``, asks SLURM for ``SIGUSR1`` 90 s before the time limit and is requeueable: Lightning's
``SLURMEnvironment`` saves an HPC checkpoint and requeues the job, and the requeued job keeps its job id,
hence its run directory (``experiments/run_dir.py``) and W&B run id, and resumes from that checkpoint.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from string import Template

from experiments import CONFIG_DIR

REPO_ROOT = CONFIG_DIR.parent
TEMPLATE_DIR = REPO_ROOT / "slurm"
GENERATED_DIR = TEMPLATE_DIR / "generated"
MULTI_GPU_TRAINERS = ("ddp", "fsdp")
CPU_SUFFIX = "_cpu"  # trainer=ddp_cpu (and any other *_cpu config): CPU processes over gloo, no GPU request


class SbatchTemplate(Template):
    delimiter = "@@"  # bash owns "$"


def experiment_names() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "exp").glob("*.yaml"))


def check_positive(name: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return value


def cpu_trainers() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "trainer").glob(f"*{CPU_SUFFIX}.yaml"))


def check_trainer(trainer: str) -> str:
    allowed = [*MULTI_GPU_TRAINERS, *cpu_trainers()]
    if trainer not in allowed:
        raise ValueError(f"trainer must be one of {', '.join(allowed)} for a SLURM job, got '{trainer}'")
    return trainer


def trainer_overrides(trainer: str, nodes: int, tasks_per_node: int) -> list[str]:
    """``trainer=<name>`` plus the job's shape. The CPU trainer configs have no ``num_nodes`` key (``++`` adds it)."""
    nodes_key = "++trainer.num_nodes" if check_trainer(trainer).endswith(CPU_SUFFIX) else "trainer.num_nodes"
    return [f"trainer={trainer}", f"{nodes_key}={nodes}", f"trainer.devices={tasks_per_node}"]


def training_overrides(
    experiment: str, nodes: int, gpus: int, trainer: str, logger: str | None, extra: list[str]
) -> list[str]:
    """The Hydra overrides every rank receives (the same on every node and every requeue)."""
    if experiment not in experiment_names():
        raise ValueError(
            f"unknown experiment '{experiment}': no file experiments/exp/{experiment}.yaml "
            f"(available: {', '.join(experiment_names())})"
        )
    overrides = [f"exp={experiment}", *trainer_overrides(trainer, nodes, gpus)]
    if logger:
        overrides.append(f"logger={logger}")
    return overrides + list(extra)


def common_fields(args: argparse.Namespace, job_name: str) -> dict[str, str]:
    output_root = Path(args.output_root).resolve()
    directives = [f"#SBATCH --partition={args.partition}"] if args.partition else []
    directives += [f"#SBATCH --account={args.account}"] if args.account else []
    directives += [f"#SBATCH {d}" for d in args.sbatch]
    return {
        "job_name": job_name,
        "nodes": str(check_positive("NODES", args.nodes)),
        "gpus": str(check_positive("GPUS", args.gpus)),
        # one task per GPU; a CPU trainer's tasks are CPU processes and ask SLURM for no GPU
        "gpu_directive": "" if args.trainer.endswith(CPU_SUFFIX) else f"#SBATCH --gpus-per-node={args.gpus}",
        "cpus_per_task": str(check_positive("--cpus-per-task", args.cpus_per_task)),
        "mem": args.mem,
        "time": args.time,
        "log_dir": str(output_root / "slurm-logs"),
        "extra_directives": "\n".join(directives),
        "repo": shlex.quote(str(REPO_ROOT)),
        "output_root": shlex.quote(str(output_root)),
        "python": shlex.quote(args.python),
    }


STANDALONE_FIELD = re.compile(r"@@\{(\w+)\}")


def render(template: str, fields: dict[str, str]) -> str:
    """Substitute ``@@{field}``; a line holding only a field that renders empty is dropped."""
    kept = []
    for line in (TEMPLATE_DIR / template).read_text().splitlines(keepends=True):
        alone = STANDALONE_FIELD.fullmatch(line.strip())
        if not (alone and fields[alone.group(1)] == ""):
            kept.append(line)
    return SbatchTemplate("".join(kept)).substitute(fields)


def render_training(args: argparse.Namespace) -> str:
    overrides = training_overrides(
        args.experiment, args.nodes, args.gpus, args.trainer, args.logger, args.overrides
    )
    fields = common_fields(args, f"lsr-{args.experiment}")
    fields["overrides"] = " ".join(shlex.quote(o) for o in overrides)
    fields["experiment"] = args.experiment
    return render("train.sbatch", fields)


def render_agent(args: argparse.Namespace) -> str:
    if not args.sweep_id:
        raise ValueError("SWEEP_ID is required: the id printed by `make sweep` (entity/project/id or id)")
    fields = common_fields(args, "lsr-sweep-agent")
    overrides = [*trainer_overrides(args.trainer, args.nodes, args.gpus), *args.overrides]
    fields.update(
        sweep_id=shlex.quote(args.sweep_id),
        count=str(check_positive("COUNT", args.count)),
        trial_overrides=" ".join(overrides),
    )
    return render("agent.sbatch", fields)


def write_and_submit(script: str, name: str, dry: bool, log_dir: Path) -> Path | None:
    if dry:
        print(script, end="")
        return None
    GENERATED_DIR.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)  # SLURM does not create the --output folder
    path = GENERATED_DIR / f"{name}.sbatch"
    path.write_text(script)
    if shutil.which("sbatch") is None:
        raise SystemExit(
            f"wrote {path}, but `sbatch` is not on PATH: submit it from a SLURM login node (or use DRY=1)"
        )
    result = subprocess.run(["sbatch", str(path)], check=True, capture_output=True, text=True)
    print(f"{path}: {result.stdout.strip()}")
    return path


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m experiments.slurm", description=__doc__.split("\n")[0])
    sub = root.add_subparsers(dest="command", required=True)
    for command in ("train", "agent"):
        p = sub.add_parser(command)
        if command == "train":
            p.add_argument("experiment", help="an experiment name (experiments/exp/<name>.yaml)")
            p.add_argument(
                "--logger", default="wandb", help="logger group (wandb: run id fixed by the run directory)"
            )
        else:
            p.add_argument("sweep_id", nargs="?", default="", help="the sweep id printed by `make sweep`")
            p.add_argument("--count", type=int, default=1, help="trials this agent runs")
        p.add_argument("--nodes", type=int, default=1)
        p.add_argument(
            "--gpus", type=int, default=8, help="GPUs per node (= tasks per node; CPU processes with ddp_cpu)"
        )
        p.add_argument("--trainer", default="ddp", help="ddp or fsdp; ddp_cpu for CPU-only nodes")
        p.add_argument("--time", default="24:00:00")
        p.add_argument("--cpus-per-task", type=int, default=8)
        p.add_argument("--mem", default="0", help="memory per node (0: all of it)")
        p.add_argument("--partition", default=None)
        p.add_argument("--account", default=None)
        p.add_argument(
            "--sbatch", action="append", default=[], help="an extra directive, e.g. --sbatch=--qos=high"
        )
        p.add_argument("--output-root", default="runs")
        p.add_argument("--python", default=sys.executable)
        p.add_argument("--dry", action="store_true", help="print the script instead of submitting it")
    return root


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse options; everything after ``--`` is a Hydra override passed through to every rank."""
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser().parse_args(argv[:split])
    args.overrides = argv[split + 1 :]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "train":
            script = render_training(args)
            name = f"{args.experiment}-{args.nodes}x{args.gpus}"
        else:
            script = render_agent(args)
            name = f"agent-{args.sweep_id.replace('/', '_')}-{args.nodes}x{args.gpus}"
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    write_and_submit(script, name, args.dry, Path(args.output_root).resolve() / "slurm-logs")


if __name__ == "__main__":
    main()
