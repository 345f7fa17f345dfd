"""Does the teacher know more than the student? Top-1 agreement of both with the labels on the training data.

Graded distillation mostly teaches which candidate comes first, and at τ = 0.01 the questions where student
and teacher already agree give almost no gradient: training follows their disagreements. This diagnostic
counts, over a task's training candidates, how often the teacher's favourite and the student's favourite
are labelled positives, and how the disagreements split. It is a lab check, not part of training: it uses
the relevance labels, which the label-free loss never sees.

``python -m experiments.llm_embedder_agreement exp=llm_embedder_tiny data.tasks.qa.use_labels=true
[model.teacher.reward=rank_aware] [--checkpoint RUN_DIR/checkpoints/last.ckpt]`` prints JSON per task. It
reads the teacher scores from the cache (``make llm-embedder-score`` first) and scores only what is missing.
Mistakes print one ``error:`` line and exit 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from experiments.cli import UsageError, prepare_process, run_command
from experiments.config_check import check_config, compose_checked


def top1_agreement(
    teacher_scores: Sequence[torch.Tensor],
    student_scores: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
) -> dict[str, int]:
    """Counts over questions (one 1-D tensor of candidate scores/labels each) whose top-1 candidate is a
    labelled positive for the teacher, the student, both or one only. Questions without a positive are
    skipped (neither can be right); ties go to the first maximum, as ``argmax`` does."""
    if not len(teacher_scores) == len(student_scores) == len(labels):
        raise ValueError(
            f"need one entry per question: {len(teacher_scores)} teacher, {len(student_scores)} student, "
            f"{len(labels)} label rows"
        )
    counts = dict.fromkeys(
        ("questions", "teacher_right", "student_right", "teacher_right_student_wrong",
         "student_right_teacher_wrong", "same_top1"),
        0,
    )  # fmt: skip
    for index, (teacher, student, gold) in enumerate(zip(teacher_scores, student_scores, labels)):
        if not teacher.shape == student.shape == gold.shape:
            raise ValueError(
                f"question {index}: teacher {tuple(teacher.shape)}, student {tuple(student.shape)} and "
                f"labels {tuple(gold.shape)} differ in shape"
            )
        gold = gold.bool()
        if not gold.any():
            continue
        teacher_top, student_top = int(teacher.argmax()), int(student.argmax())
        teacher_right, student_right = bool(gold[teacher_top]), bool(gold[student_top])
        counts["questions"] += 1
        counts["teacher_right"] += teacher_right
        counts["student_right"] += student_right
        counts["teacher_right_student_wrong"] += teacher_right and not student_right
        counts["student_right_teacher_wrong"] += student_right and not teacher_right
        counts["same_top1"] += teacher_top == student_top
    return counts


def load_student_checkpoint(module: torch.nn.Module, path: Path) -> None:
    """Load a training checkpoint (``last.ckpt``) into ``module``; the frozen LM is not stored in it."""
    if not path.is_file():
        raise UsageError(f"checkpoint not found: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"])


@torch.no_grad()
def agreement(overrides: list[str], checkpoint: Path | None = None) -> dict:
    cfg = compose_checked(overrides)
    prepare_process(bool(cfg.offline), cfg.threads)  # before the imports below load huggingface_hub
    check_config(cfg)
    if checkpoint is not None and not checkpoint.is_file():
        raise UsageError(f"checkpoint not found: {checkpoint}")
    from hydra.utils import instantiate

    from lightning_modules.llm_embedder.teacher import ScoringItem

    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    module = instantiate(cfg.model, _convert_="all")
    if checkpoint is not None:
        load_student_checkpoint(module, checkpoint)
    module.eval()
    report: dict = {"reward": module.reward, "student": str(checkpoint or "untrained"), "tasks": {}}
    for name, examples in datamodule.examples.items():
        task = examples[0].task
        settings = module.task_settings.get(task)
        if settings is None or not settings.uses_teacher:
            continue
        if any(example.labels is None for example in examples):
            raise UsageError(
                f"data set '{name}' has no labels: pass data.tasks.{name}.use_labels=true "
                "(the labels only count agreement here; training stays label-free)"
            )
        teacher = module.require_teacher(task)
        items = [ScoringItem(c, e.query, e.answer) for e in examples for c in e.candidates]
        sizes = [len(e.candidates) for e in examples]
        teacher_rows = teacher.lookup(settings.template, items).float().split(sizes)
        encode = {"batch_size": module.eval_batch_size, "precision": "fp32"}
        queries = module.embedder.encode_queries(
            [settings.query_instruction + e.query for e in examples], **encode
        )
        keys = module.embedder.encode_documents(
            [settings.key_instruction + item.key for item in items], **encode
        )
        student_rows = [
            keys_of_question @ query for query, keys_of_question in zip(queries, keys.split(sizes))
        ]
        label_rows = [torch.tensor(e.labels) for e in examples]
        report["tasks"][name] = top1_agreement(teacher_rows, student_rows, label_rows)
    return report


def agreement_command(arguments: list[str]) -> None:
    """``key=value`` overrides plus ``--checkpoint PATH``; prints the report as JSON."""
    checkpoint = None
    if "--checkpoint" in arguments:
        at = arguments.index("--checkpoint")
        if at + 1 >= len(arguments):
            raise UsageError("--checkpoint needs a path (a run's checkpoints/last.ckpt)")
        checkpoint = Path(arguments.pop(at + 1))
        arguments.pop(at)
    print(json.dumps(agreement(arguments, checkpoint), indent=2))


def main(argv: list[str] | None = None) -> int:
    return run_command(agreement_command, argv)


if __name__ == "__main__":
    sys.exit(main())
