"""Per-task settings of LLM-Embedder: embedder instructions, teacher prompt templates and loss weights.

The defaults are the reference code's (FlagOpen/FlagEmbedding, research/llm_embedder: ``TASK_CONFIG`` in
``src/retrieval/data.py`` and the templates of ``run_lm_score.py``). Every field can be overridden per task
from the experiment config (``model.tasks.<task>.<field>``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

TASKS = ("qa", "convsearch", "chat", "lrlm", "icl", "tool")


@dataclass(frozen=True)
class TaskSettings:
    """How one task family trains.

    Attributes:
        query_instruction / key_instruction: text prefixed to the query / key before embedding.
        template: the teacher prompt, with ``{key}``, ``{query}`` and ``{answer}``; the teacher scores the
            text from ``{answer}`` on (the whitespace before it included) given everything before it.
            ``None``: the task has no teacher (contrastive only).
        distillation: ``"graded"`` (the reference's ``stable_distill``), ``"kl"`` or ``"none"``.
        distill_weight / contrastive_weight: loss weights (reference: contrastive 0.2, distillation 1.0,
            then per-task zeros).
        teacher_temperature: ``τ_t`` of the KL distillation.
    """

    query_instruction: str
    key_instruction: str
    template: str | None
    distillation: str = "graded"
    distill_weight: float = 1.0
    contrastive_weight: float = 0.2
    teacher_temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.distillation not in ("graded", "kl", "none"):
            raise ValueError(f"distillation must be graded, kl or none; got '{self.distillation}'")
        if self.distill_weight < 0 or self.contrastive_weight < 0:
            raise ValueError("loss weights must be >= 0")
        if self.uses_teacher and self.template is None:
            raise ValueError("a task with distillation needs a teacher template")
        if self.template is not None and "{answer}" not in self.template:
            raise ValueError(f"template must contain '{{answer}}': {self.template!r}")
        if self.distill_weight == 0 and self.contrastive_weight == 0:
            raise ValueError("a task needs a positive distill_weight or contrastive_weight")

    @property
    def uses_teacher(self) -> bool:
        return self.distillation != "none" and self.distill_weight > 0


QA_TEMPLATE = "Knowledge: {key}\n\nQuestion: {query}\n\nAnswer: {answer}"

DEFAULT_TASKS: dict[str, TaskSettings] = {
    "qa": TaskSettings(
        "Represent this query for retrieving relevant documents: ",
        "Represent this document for retrieval: ",
        QA_TEMPLATE,
        distillation="graded",
        contrastive_weight=0.0,
    ),
    "convsearch": TaskSettings(
        "Encode this query and context for searching relevant passages: ",
        "Encode this passage for retrieval: ",
        QA_TEMPLATE,
        distillation="none",
        distill_weight=0.0,
        contrastive_weight=0.2,
    ),
    "chat": TaskSettings(
        "Embed this dialogue to find useful historical dialogues: ",
        "Embed this historical dialogue for retrieval: ",
        "{key}\nSpeaker 1: {query}\nSpeaker 2: {answer}",
        distillation="kl",
        contrastive_weight=0.0,
        teacher_temperature=0.1,
    ),
    "lrlm": TaskSettings(
        "Embed this text chunk for finding useful historical chunks: ",
        "Embed this historical text chunk for retrieval: ",
        "{key}\n\n{query} {answer}",
        distillation="kl",
        contrastive_weight=0.0,
        teacher_temperature=0.1,
    ),
    "icl": TaskSettings(
        "Convert this example into vector to look for useful examples: ",
        "Convert this example into vector for retrieval: ",
        "{key}\n{query}\n{answer}",
        distillation="graded",
        contrastive_weight=0.0,
    ),
    "tool": TaskSettings(
        "Transform this user request for fetching helpful tool descriptions: ",
        "Transform this tool description for retrieval: ",
        None,
        distillation="none",
        distill_weight=0.0,
        contrastive_weight=0.2,
    ),
}


def task_settings(overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, TaskSettings]:
    """The default settings with per-task overrides applied (unknown tasks or fields are errors)."""
    known = {f.name for f in fields(TaskSettings)}
    settings = dict(DEFAULT_TASKS)
    for task, values in (overrides or {}).items():
        values = dict(values or {})
        unknown = set(values) - known
        if unknown:
            raise ValueError(
                f"model.tasks.{task}: unknown field(s) {sorted(unknown)} (known: {sorted(known)})"
            )
        if task in settings:
            settings[task] = replace(settings[task], **values)
        else:
            missing = {"query_instruction", "key_instruction", "template"} - set(values)
            if missing:
                raise ValueError(
                    f"model.tasks.{task}: a new task must set {sorted(missing)} (built-in: {', '.join(TASKS)})"
                )
            settings[task] = TaskSettings(**values)
    return settings


def split_template(template: str, key: str, query: str, answer: str) -> tuple[str, str]:
    """``(prompt, output)``: the filled template cut where ``{answer}`` starts; the teacher scores only the
    answer's tokens, as the reference (``run_lm_score.py`` labels the tokens of ``"Answer: " + answer`` minus
    those of ``"Answer:"``). Spaces right before the answer belong to its first token and move into the
    output (``"Answer: Paris"`` scores ``" Paris"`` given ``"…Answer:"``); a line break stays in the prompt
    (icl's ``"{query}\n{answer}"`` scores ``"Paris"`` given ``"…\n"``, not the ``"\n"`` token)."""
    head, tail = template.split("{answer}", 1)
    stripped = head.rstrip(" \t")
    gap = head[len(stripped) :]
    prompt = stripped.format(key=key.strip(), query=query.strip())
    output = gap + answer.strip() + tail.format(key=key.strip(), query=query.strip())
    return prompt, output


def settings_as_dict(settings: dict[str, TaskSettings]) -> dict[str, dict[str, Any]]:
    return {task: asdict(value) for task, value in settings.items()}
