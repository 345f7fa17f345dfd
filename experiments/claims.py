"""The claims table that leads ``make report``: each paper claim, our numbers and a verdict by a stated rule.

Two files: ``experiments/lab_claims.yaml`` defines the claims (paper, quoted abstract sentences, the lab
setting, the rule and its thresholds, the roles the rule reads); a *claims map* (``lab_results/claims.yaml``)
says which result file fills each role::

    dream_label_free:
      smollm2: dream_label_free_smollm.json     # a file next to the map (lab_results/), or a path
      minilm: null                             # not run yet → "not measurable here"
      diagnosis: why it came out this way      # optional text, shown after the rule's reason

The verdict is one of :data:`VERDICTS`, with a reason. The rules, :data:`RULES` (thresholds from the yaml):

- ``gain_over_start``: each role's dev nDCG@10 after training ≥ before + ``min_gain``; with ``label_free``
  the run's label use must start with "none" and its ``candidates`` (the exp's ``meta.candidates``) must
  not say the groups contain the gold paragraph (:data:`GOLD_IN_CANDIDATES`).
- ``rag_better``: for each start role R (compared with ``contrastive_R``): rag/answer_nll after ≤ start's
  − ``min_nll_drop`` and ≤ contrastive's − ``min_nll_drop``; rag/em after ≥ start's + ``min_em_gain`` and
  ≥ contrastive's + ``min_em_gain``; the two training times within ``time_tolerance`` of each other.
- ``student_beats_teacher``: the student's nDCG@10 > the teacher's + ``min_gain``; the teacher's label use
  (``teacher_label_use`` of the student, else the teacher file's ``label_use``) must start with "none".
- ``rabtriever_student``: reranking measured at ``n`` candidates; teacher − student nDCG@10 ≤ ``max_gap``;
  teacher seconds / student seconds ≥ ``min_speedup`` (stored document states, computed once, are not
  per-query cost); full-corpus nDCG@10 ≥ max(``chance_factor`` × chance, chance + ``chance_margin``).
- ``reference``: no verdict; the numbers are the reference row.

A role without a file, or a file without the measurement, gives "not measurable here" and says which.
See docs/evaluation.md, "Claims table".
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from experiments.cli import UsageError
from experiments.report_rows import RAG_REFERENCE_NAMES, read_json

DEFINITIONS = Path(__file__).with_name("lab_claims.yaml")
HOLDS, DOES_NOT_HOLD, NOT_MEASURABLE, REFERENCE = (
    "holds",
    "does not hold at this scale",
    "not measurable here",
    "reference row",
)
VERDICTS = (HOLDS, DOES_NOT_HOLD, NOT_MEASURABLE, REFERENCE)
# results.json["candidates"] saying the candidate groups hold the gold paragraph (the exps' meta.candidates)
GOLD_IN_CANDIDATES = re.compile(r"\bcontains? (the|a) gold", re.IGNORECASE)


class NotMeasurable(Exception):
    """A claim's files lack what its rule needs (the message says what)."""


@dataclass
class Verdict:
    claim: str
    paper: str
    quote: str
    setting: str
    numbers: str
    references: str
    verdict: str
    reason: str
    diagnosis: str = ""


# ---- reading numbers ----------------------------------------------------------------------------------
def ndcg(results: dict[str, Any], when: str, role: str) -> float:
    value = ((results.get("metrics") or {}).get(when) or {}).get("ndcg@10")
    if value is None:
        raise NotMeasurable(f"{role}: no {when}-training nDCG@10 in its results")
    return float(value)


def rag_metric(results: dict[str, Any], when: str, metric: str, role: str) -> float:
    value = ((results.get("rag") or {}).get(when) or {}).get(metric)
    if value is None:
        raise NotMeasurable(f"{role}: no rag/{metric} {when} training (run without callbacks=rag)")
    return float(value)


def teacher_ndcg(teacher: dict[str, Any]) -> float:
    """A results.json's final nDCG@10, or the single task of a ``make eval`` mteb_results.json."""
    if "metrics" in teacher:
        return ndcg(teacher, "after", "teacher")
    tasks = teacher.get("tasks") or {}
    if len(tasks) != 1:
        raise NotMeasurable(f"teacher: expected one evaluated task, found {len(tasks)}")
    entry = next(iter(tasks.values()))
    return float(entry.get("ndcg_at_10", entry.get("main_score")))


def chance_ndcg_at_10(corpus_size: int, relevant: int) -> float:
    """Expected nDCG@10 of a uniformly random ranking with ``relevant`` binary-relevant documents among
    ``corpus_size``: each rank holds a relevant document with probability relevant / corpus_size."""
    dcg = sum((relevant / corpus_size) / math.log2(rank + 1) for rank in range(1, 11))
    ideal = sum(1 / math.log2(rank + 1) for rank in range(1, min(relevant, 10) + 1))
    return dcg / ideal


# ---- rules: (files by role, params) -> (numbers, references, verdict, reason) ----------------------------
Outcome = tuple[str, str, str, str]


def judge(failures: list[str], blockers: list[str]) -> tuple[str, str]:
    """Blockers (the setting is not the claim's) → not measurable; failed conditions → does not hold."""
    if blockers:
        also = f" (and by the rule: {'; '.join(failures)})" if failures else ""
        return NOT_MEASURABLE, "; ".join(blockers) + also
    return (DOES_NOT_HOLD, "; ".join(failures)) if failures else (HOLDS, "every condition of the rule met")


def label_free_problem(results: dict[str, Any], role: str) -> str | None:
    label_use = str(results.get("label_use", "?"))
    if not label_use.lower().startswith("none"):
        return f"{role}: not label-free (label use: {label_use})"
    if GOLD_IN_CANDIDATES.search(str(results.get("candidates", ""))):
        return f"{role}: the candidate groups contain the gold paragraph (labels enter through them)"
    return None


def gain_over_start(files: dict[str, dict], params: dict[str, Any]) -> Outcome:
    numbers, failures, blockers = [], [], []
    for role, results in files.items():
        problem = label_free_problem(results, role) if params.get("label_free") else None
        blockers += [problem] if problem else []
        before, after = ndcg(results, "before", role), ndcg(results, "after", role)
        numbers.append(f"{role}: nDCG@10 {before:.3f} → {after:.3f} (Δ {after - before:+.3f})")
        if after - before < params["min_gain"]:
            failures.append(f"{role}: Δ {after - before:+.3f} < {params['min_gain']}")
    return "; ".join(numbers), "start: the values before the arrows", *judge(failures, blockers)


def rag_references_text(results: dict[str, Any]) -> str:
    rows = (results.get("rag") or {}).get("references") or {}
    return ", ".join(
        f"{RAG_REFERENCE_NAMES.get(k, k)} NLL {m['answer_nll']:.3f} EM {m['em']:.2f}" for k, m in rows.items()
    )


def time_problem(run: dict, contrastive: dict, role: str, tolerance: float) -> str | None:
    a = (run.get("budget") or {}).get("train_seconds")
    b = (contrastive.get("budget") or {}).get("train_seconds")
    if not a or not b:
        return f"{role}: training time not recorded for the run or its contrastive reference"
    if abs(a - b) > tolerance * max(a, b):
        return f"{role}: not the same training time ({a:.0f} s vs contrastive {b:.0f} s)"
    return None


def rag_comparison(run: dict, contrastive: dict, role: str, params: dict[str, Any]) -> tuple[str, list[str]]:
    """One start's numbers and the conditions it fails (NotMeasurable without rag numbers)."""
    nll = [rag_metric(run, w, "answer_nll", role) for w in ("before", "after")]
    em = [rag_metric(run, w, "em", role) for w in ("before", "after")]
    c_nll = rag_metric(contrastive, "after", "answer_nll", f"contrastive_{role}")
    c_em = rag_metric(contrastive, "after", "em", f"contrastive_{role}")
    numbers = (
        f"{role}: rag/answer_nll {nll[0]:.3f} → {nll[1]:.3f} (contrastive {c_nll:.3f}), "
        f"rag/em {em[0]:.2f} → {em[1]:.2f} (contrastive {c_em:.2f})"
    )
    drop, gain = params["min_nll_drop"], params["min_em_gain"]
    checks = {
        f"{role}: NLL not ≥ {drop} below the start's": nll[1] <= nll[0] - drop,
        f"{role}: NLL not ≥ {drop} below contrastive's": nll[1] <= c_nll - drop,
        f"{role}: EM not ≥ {gain} above the start's": em[1] >= em[0] + gain,
        f"{role}: EM not ≥ {gain} above contrastive's": em[1] >= c_em + gain,
    }
    return numbers, [reason for reason, met in checks.items() if not met]


def rag_better(files: dict[str, dict], params: dict[str, Any]) -> Outcome:
    numbers, references, failures, blockers = [], [], [], []
    for role in (r for r in files if not r.startswith("contrastive_")):
        run, contrastive = files[role], files[f"contrastive_{role}"]
        problem = time_problem(run, contrastive, role, params["time_tolerance"])
        blockers += [problem] if problem else []
        try:
            text, failed = rag_comparison(run, contrastive, role, params)
        except NotMeasurable as missing:
            blockers.append(str(missing))
            continue
        numbers.append(text)
        references.append(f"{role}: {rag_references_text(run)}")
        failures += failed
    return "; ".join(numbers) or "–", "; ".join(references) or "–", *judge(failures, blockers)


def student_beats_teacher(files: dict[str, dict], params: dict[str, Any]) -> Outcome:
    student, teacher = files["student"], files["teacher"]
    label_use = student.get("teacher_label_use") or teacher.get("label_use")
    blockers = []
    if label_use is None:
        blockers.append("the teacher's label use is not recorded (teacher_label_use / label_use)")
    elif not str(label_use).lower().startswith("none"):
        blockers.append(f"the teacher is not unsupervised (label use: {label_use})")
    ours, theirs = ndcg(student, "after", "student"), teacher_ndcg(teacher)
    failures = [] if ours > theirs + params["min_gain"] else [f"student {ours:.3f} ≤ teacher {theirs:.3f}"]
    numbers = f"student nDCG@10 {ours:.3f} (Δ {ours - theirs:+.3f} over the teacher)"
    return numbers, f"teacher nDCG@10 {theirs:.3f}", *judge(failures, blockers)


def rabtriever_student(files: dict[str, dict], params: dict[str, Any]) -> Outcome:
    run = files["run"]
    rerank = run.get("rerank") or {}
    metrics, seconds = rerank.get("metrics") or {}, rerank.get("seconds") or {}
    if not {"teacher_rerank", "student_rerank"} <= set(metrics):
        raise NotMeasurable("run: no teacher and student reranking in results.json['rerank']")
    if not seconds.get("teacher_rerank") or not seconds.get("student_rerank"):
        raise NotMeasurable("run: reranking seconds not recorded")
    blockers = []
    if rerank.get("top_k") != params["n"]:
        blockers.append(f"reranking measured at N = {rerank.get('top_k')}, the claim is at N = {params['n']}")
    teacher, student = metrics["teacher_rerank"]["ndcg@10"], metrics["student_rerank"]["ndcg@10"]
    speedup = seconds["teacher_rerank"] / seconds["student_rerank"]
    full = ndcg(run, "after", "run")
    chance = chance_ndcg_at_10(params["corpus_size"], params["relevant_per_query"])
    wide = max(params["chance_factor"] * chance, chance + params["chance_margin"])
    checks = {
        f"gap {teacher - student:+.3f} > {params['max_gap']}": teacher - student <= params["max_gap"],
        f"speed-up {speedup:.1f}× < {params['min_speedup']}×": speedup >= params["min_speedup"],
        f"full-corpus nDCG@10 {full:.4f} < {wide:.4f} (chance {chance:.4f})": full >= wide,
    }
    numbers = (
        f"student rerank nDCG@10 {student:.3f} (teacher − student {teacher - student:+.3f}), "
        f"{speedup:.1f}× faster per query at N = {rerank.get('top_k')}; full-corpus nDCG@10 {full:.4f}"
    )
    others = ", ".join(
        f"{k.replace('_', ' ')} {v['ndcg@10']:.3f}" for k, v in metrics.items() if k != "student_rerank"
    )
    references = f"{others}; chance (full corpus) {chance:.4f}"
    failures = [reason for reason, met in checks.items() if not met]
    return numbers, references, *judge(failures, blockers)


def reference(files: dict[str, dict], params: dict[str, Any]) -> Outcome:
    numbers = []
    for role, results in files.items():
        after = ndcg(results, "after", role)
        before = ((results.get("metrics") or {}).get("before") or {}).get("ndcg@10")
        delta = f" (Δ {after - before:+.3f})" if before is not None else ""
        rag = ((results.get("rag") or {}).get("after") or {}).get("answer_nll")
        numbers.append(f"{role}: nDCG@10 {after:.3f}{delta}" + (f", rag/answer_nll {rag:.3f}" if rag else ""))
    return "; ".join(numbers), "–", REFERENCE, "no claim: the baseline the claims compare with"


RULES: dict[str, Callable[[dict[str, dict], dict[str, Any]], Outcome]] = {
    "gain_over_start": gain_over_start,
    "rag_better": rag_better,
    "student_beats_teacher": student_beats_teacher,
    "rabtriever_student": rabtriever_student,
    "reference": reference,
}


# ---- the claims and the map ---------------------------------------------------------------------------
def load_definitions(path: Path = DEFINITIONS) -> dict[str, dict[str, Any]]:
    """The claims of ``lab_claims.yaml``, each checked for its keys and a known rule."""
    definitions = yaml.safe_load(path.read_text()) or {}
    for claim, entry in definitions.items():
        missing = [k for k in ("paper", "quote", "setting", "rule", "roles") if k not in (entry or {})]
        if missing:
            raise UsageError(f"{path}: claim '{claim}' lacks {', '.join(missing)}")
        if entry["rule"] not in RULES:
            raise UsageError(
                f"{path}: {claim}.rule: unknown rule '{entry['rule']}' (known: {', '.join(RULES)})"
            )
    return definitions


DIAGNOSIS = "diagnosis"  # a claims-map key per claim that is not a role: the lab's explanation of the verdict


def load_claims_map(path: Path, definitions: dict[str, dict[str, Any]]) -> dict[str, dict[str, Path]]:
    """``claim → role → result file`` from a claims map; file names are relative to the map's folder.
    Unknown claims or roles and listed files that do not exist are errors naming the map and the key.
    A claim's ``diagnosis`` text is not a role (:func:`load_diagnoses` reads it)."""
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: expected a mapping claim id → {{role: result file}}")
    mapped: dict[str, dict[str, Path]] = {}
    for claim, roles in raw.items():
        if claim not in definitions:
            raise UsageError(f"{path}: {claim}: unknown claim (known: {', '.join(definitions)})")
        if not isinstance(roles, dict):
            raise UsageError(f"{path}: {claim}: expected {{role: result file}}, got {roles!r}")
        mapped[claim] = {}
        for role, name in roles.items():
            if role == DIAGNOSIS:
                continue
            if role not in definitions[claim]["roles"]:
                known = ", ".join(definitions[claim]["roles"])
                raise UsageError(f"{path}: {claim}.{role}: unknown role (roles: {known})")
            if name is None:
                continue
            file = path.parent / str(name)
            if not file.is_file():
                raise UsageError(f"{path}: {claim}.{role}: no such file {file}")
            mapped[claim][role] = file
    return mapped


def load_diagnoses(path: Path) -> dict[str, str]:
    """``claim → diagnosis`` text of a claims map (claims without one are left out)."""
    raw = yaml.safe_load(path.read_text()) or {}
    return {
        claim: " ".join(str(roles[DIAGNOSIS]).split())
        for claim, roles in raw.items()
        if isinstance(roles, dict) and roles.get(DIAGNOSIS)
    }


def evaluate_claim(claim: str, entry: dict[str, Any], files: dict[str, Path]) -> Verdict:
    """One claim's row: the rule on the role files, or "not measurable here" with what is missing."""
    verdict = Verdict(
        claim, entry["paper"], " ".join(str(entry["quote"]).split()), entry["setting"], "–", "–", "", ""
    )
    missing = [role for role in entry["roles"] if role not in files]
    if missing:
        verdict.verdict, verdict.reason = NOT_MEASURABLE, f"no result file listed for {', '.join(missing)}"
        return verdict
    loaded = {role: read_json(file) for role, file in files.items()}
    try:
        outcome = RULES[entry["rule"]](loaded, dict(entry.get("params") or {}))
    except NotMeasurable as reason:
        verdict.verdict, verdict.reason = NOT_MEASURABLE, str(reason)
        return verdict
    verdict.numbers, verdict.references, verdict.verdict, verdict.reason = outcome
    return verdict


def claim_verdicts(
    claims_map: Path, definitions_file: Path = DEFINITIONS
) -> tuple[list[Verdict], list[Path]]:
    """Every claim's verdict (in the definitions' order) and the result files the map lists."""
    definitions = load_definitions(definitions_file)
    mapped = load_claims_map(claims_map, definitions)
    verdicts = [evaluate_claim(c, entry, mapped.get(c, {})) for c, entry in definitions.items()]
    diagnoses = load_diagnoses(claims_map)
    for verdict in verdicts:
        verdict.diagnosis = diagnoses.get(verdict.claim, "")
    files = sorted({file.resolve() for roles in mapped.values() for file in roles.values()})
    return verdicts, files


def cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def claims_markdown(verdicts: list[Verdict], claims_map: Path) -> str:
    lines = [
        "# Paper claims",
        "",
        f"Result files per claim: `{claims_map}`; claims, thresholds and rules: `experiments/lab_claims.yaml` "
        "and `experiments/claims.py`. Verdicts: holds / does not hold at this scale / not measurable here.",
        "",
        "| claim | paper (abstract) | lab setting | our numbers | reference rows | verdict | reason | diagnosis |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        quoted = f"{v.paper}: “{v.quote}”"
        lines.append(
            f"| {v.claim} | {cell(quoted)} | {cell(v.setting)} | {cell(v.numbers)} | "
            f"{cell(v.references)} | **{v.verdict}** | {cell(v.reason)} | {cell(v.diagnosis) or '–'} |"
        )
    return "\n".join(lines) + "\n\n"


def write_claims_csv(verdicts: list[Verdict], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["claim", "paper", "setting", "numbers", "references", "verdict", "reason", "diagnosis"]
        )
        for v in verdicts:
            writer.writerow(
                [v.claim, v.paper, v.setting, v.numbers, v.references, v.verdict, v.reason, v.diagnosis]
            )
