"""The markdown summary of ``bench/results/*.json`` (rebuilt from whatever parts are present)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.bm25_mining import summary_lines as bm25_summary_lines

GOALS = {"mfu_small": 0.40, "encode_speedup": 1.5, "encode_cosine": 0.999, "cached_over_first": 0.05}


def load_parts(folder: Path) -> dict[str, dict[str, Any]]:
    """The parts ``python -m bench`` writes (other JSON files in the folder belong to other benchmarks)."""
    return {
        name: json.loads((folder / f"{name}.json").read_text())
        for name in SECTIONS
        if (folder / f"{name}.json").exists()
    }


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def machine_section(parts: dict[str, dict[str, Any]]) -> list[str]:
    first = next(iter(parts.values()))["machine"]
    loads = {name: part["machine"].get("load_average_1_5_15") for name, part in parts.items()}
    lines = [
        "## Machine",
        "",
        f"- CPU: {first['cpu']} ({first['logical_cpus']} logical CPUs; flags: {', '.join(first['cpu_flags']) or 'none'})",
        f"- torch threads: {first['torch_threads']}; torch {first['torch']}, transformers {first['transformers']}, "
        f"lightning {first['lightning']}, Python {first['python']}",
        f"- sizes: {', '.join(sorted({str(part.get('sizes', 'unknown')) for part in parts.values()}))}"
        " (`quick` = a smoke run at tiny sizes, not reference numbers)",
        f"- run: {first['date_utc']}; load average (1/5/15 min) when each part ended: "
        + "; ".join(f"{k} {v}" for k, v in loads.items()),
        "- `cpu share` = this process's CPU time / (wall time × threads) over the timed repeats: 1.0 on an idle",
        "  machine; lower means other processes held the cores and the wall times (and MFU) are pessimistic.",
        "",
    ]
    return lines


def ceiling_section(result: dict[str, Any]) -> list[str]:
    return [
        "## Machine ceiling (square matmul)",
        "",
        "| dtype | GFLOP/s | cpu share |",
        "| --- | ---: | ---: |",
        *(
            f"| {d} | {result[d]['gflops_per_s']:.0f} | {share(result[d]['timing'])} |"
            for d in ("fp32", "bf16")
        ),
        "",
        f"{result['matmul_size']}² matmul, {result['threads']} threads, median of interleaved repeats; "
        f"bf16/fp32 = {result['bf16_over_fp32']:.2f}.",
        "",
    ]


def share(timing: dict[str, Any]) -> str:
    value = timing.get("cpu_share")
    return "n/a" if value is None else f"{value:.2f}"


def train_section(result: dict[str, Any]) -> list[str]:
    lines = [
        "## Training step per method",
        "",
        "One optimisation step (`training_step` + backward + `on_before_optimizer_step` + AdamW step) on a fixed",
        "batch, built from the method's own experiment config. FLOPs are counted by `torch.utils.flop_counter`",
        "(matmuls and attention, forward and backward); MFU = counted FLOP/s over the measured matmul ceiling.",
        "",
        "`MFU/cpu share` (an estimate, not a measurement) rescales the step's MFU by the ceiling run's cpu share",
        "over the step's: what the step would reach had both had the cores to the same degree.",
        "",
        "| method | size | dtype | s/step | samples/s | tokens/s | GFLOP/step | MFU vs fp32 | MFU vs bf16 "
        "| peak RSS MB | cpu share | MFU/cpu share (est.) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    ceiling_share = result.get("ceiling_cpu_share", {})
    for run in result["runs"]:
        own = run[f"mfu_vs_{run['step_dtype']}"]
        step_share, base_share = run["timing"].get("cpu_share"), ceiling_share.get(run["step_dtype"])
        adjusted = f"{own * base_share / step_share:.1%}" if step_share and base_share else "n/a"
        lines.append(
            f"| {run['method']} | {run['size']} | {run['step_dtype']} | {run['timing']['median_s']:.3f} | "
            f"{run['samples_per_s']:.2f} | {run['tokens_per_s']:.0f} | {run['counted_flops_per_step'] / 1e9:.1f} | "
            f"{run['mfu_vs_fp32']:.1%} | {run['mfu_vs_bf16']:.1%} | {run['peak_rss_mb']:.0f} | "
            f"{share(run['timing'])} | {adjusted} |"
        )
    lines.append("")
    for run in result["runs"]:
        if run["size"] == "small":
            own = run[f"mfu_vs_{run['step_dtype']}"]
            lines.append(
                f"- {run['method']} small: {run['description']}. MFU goal ≥ 40%: {verdict(own >= GOALS['mfu_small'])}"
                f" ({own:.1%} of the {run['step_dtype']} ceiling)."
            )
            if "profile" in run:
                kinds = ", ".join(f"{k} {v:.0%}" for k, v in run["profile"]["share_by_kind"].items())
                top = ", ".join(f"{o['op']} {o['share']:.0%}" for o in run["profile"]["top_ops"][:5])
                lines.append(f"  Profile of one step (CPU self time): {kinds}. Top ops: {top}.")
    by_key = {(run["method"], run["size"]): run for run in result["runs"]}
    for (method, size), run in by_key.items():
        fp32 = by_key.get((method, "small"))
        if size == "small_bf16" and fp32 is not None:
            speed = fp32["timing"]["median_s"] / run["timing"]["median_s"]
            loss, reference = run["loss_of_first_timed_batch"], fp32["loss_of_first_timed_batch"]
            lines.append(
                f"- {method} with `trainer.precision=bf16-mixed`: {speed:.2f}× the fp32 step's speed; loss of the "
                f"first timed batch {loss:.4f} vs {reference:.4f} in fp32 ({abs(loss - reference) / abs(reference):.2%})."
            )
    if result.get("not_benchmarked"):
        names = ", ".join(
            f"{m['method']} (needs experiments/exp/{m['experiment']}.yaml and lightning_modules/{m['package']})"
            for m in result["not_benchmarked"]
        )
        lines += ["", f"Not benchmarked (not in the tree at run time): {names}."]
    if result.get("failed"):
        lines += ["", "Failed: " + ", ".join(result["failed"]) + " (stderr tails in train_step.json)."]
    return lines + [""]


def encode_section(result: dict[str, Any]) -> list[str]:
    minilm = result["minilm_vs_sentence_transformers"]
    lines = [
        "## Corpus encoding: project vs sentence-transformers",
        "",
        f"all-MiniLM-L6-v2, {minilm['texts']} documents of {result['corpus']}, max length {minilm['max_length']}, "
        f"batch size {minilm['batch_size']}, {minilm['threads']} threads; reference = sentence-transformers `encode` in fp32.",
        "",
        "| encoder | docs/s | speed-up vs ST fp32 | min cosine vs ST fp32 | cpu share |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, variant in minilm["variants"].items():
        lines.append(
            f"| {name} | {variant['docs_per_s']:.1f} | {variant['speedup_vs_sentence_transformers_fp32']:.2f}× | "
            f"{variant['min_cosine_vs_sentence_transformers_fp32']:.6f} | {share(variant['timing'])} |"
        )
    best = minilm["variants"]["project_bf16"]
    met = (
        best["speedup_vs_sentence_transformers_fp32"] >= GOALS["encode_speedup"]
        and best["min_cosine_vs_sentence_transformers_fp32"] >= GOALS["encode_cosine"]
    )
    lines += ["", f'Goal (≥ 1.5× at cosine ≥ 0.999, project default `precision="bf16"`): {verdict(met)}.', ""]
    smollm = result["smollm_precisions"]
    lines += [
        f"SmolLM2-135M (mean pooling), {smollm['texts']} HotpotQA paragraphs, max length {smollm['max_length']}, "
        f"batch {smollm['batch_size']}:",
        "",
        "| precision | docs/s | speed-up vs fp32 | min cosine vs fp32 | profile of one batch (CPU self time) | dtype casts |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for name, variant in smollm["variants"].items():
        profile = smollm["profile_one_batch"][name]
        kinds = ", ".join(f"{k} {v:.0%}" for k, v in profile["share_by_kind"].items())
        lines.append(
            f"| {name} | {variant['docs_per_s']:.2f} | {variant['speedup_vs_fp32']:.2f}× | "
            f"{variant['min_cosine_vs_fp32']:.6f} | {kinds} | {profile['dtype_casts']} |"
        )
    forward = result.get("smollm_forward")
    if forward:
        timings = forward["timings"]
        lines += [
            "",
            f"One SmolLM2-135M forward of {forward['batch']}×{forward['length']} tokens (no tokenisation, no pooling):",
            "",
            "| variant | s | speed-up vs fp32 | cpu share |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, timing in timings.items():
            speedup = forward["speedup_vs_fp32"].get(name)
            shown = f"{speedup:.2f}×" if speedup is not None else "—"
            lines.append(f"| {name} | {timing['median_s']:.3f} | {shown} | {share(timing)} |")
    return lines + [""]


def signal_section(result: dict[str, Any]) -> list[str]:
    lines = [
        "## LLM signal: first run vs cached run",
        "",
        "| signal | items | first s | cached s | cached / first | goal ≤ 5% |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for signal in result["signals"].values():
        ratio = signal["cached_over_first"]
        lines.append(
            f"| {signal['signal']} | {signal['items']} | {signal['first_s']:.2f} | {signal['cached_s']:.3f} | "
            f"{ratio:.2%} | {verdict(ratio <= GOALS['cached_over_first'])} |"
        )
    return lines + ["", f"LM: {result['lm']}.", ""]


def memory_section(result: dict[str, Any]) -> list[str]:
    lines = [
        "## Frozen-LM memory (SmolLM2-135M, forward + backward to the input embeddings, own process each)",
        "",
        "| loading | dtype | trainable params | RSS before load MB | peak RSS MB |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name in ("project_float32", "project_bfloat16", "naive_float32"):
        run = result[name]
        lines.append(
            f"| {run['mode']} | {run['dtype']} | {run['trainable']:,} | {run['baseline_rss_mb']:.0f} | {run['peak_rss_mb']:.0f} |"
        )
    lines += [
        "",
        "Naive (fp32, trainable, AdamW over all parameters) / project peak: "
        f"{result['naive_over_project_float32_peak']:.2f}× vs project fp32, "
        f"{result['naive_over_project_bfloat16_peak']:.2f}× vs project bf16 "
        f"(above the pre-load baseline: {result['naive_over_project_float32_above_baseline']:.2f}× and "
        f"{result['naive_over_project_bfloat16_above_baseline']:.2f}×).",
        "",
    ]
    return lines


def dream_section(result: dict[str, Any]) -> list[str]:
    timings = result["timings"]
    lines = [
        f"## DREAM one-pass injection vs two-pass in-batch attention ({result['lm']})",
        "",
        f"{result['queries']} queries × {result['candidates']} candidates × ≤ {result['max_document_tokens']} tokens; "
        "forward + backward to the cosines.",
        "",
        "| implementation | s/step | cpu share |",
        "| --- | ---: | ---: |",
    ]
    for name, timing in timings.items():
        lines.append(f"| {name} | {timing['median_s']:.3f} | {share(timing)} |")
    lines += [
        "",
        f"Two-pass / DREAM: {result['two_pass_over_dream_middle_third']:.2f}× (DREAM middle-third heads), "
        f"{result['two_pass_over_dream_all_heads']:.2f}× (DREAM all heads).",
        "",
    ]
    return lines


SECTIONS = {
    "ceiling": ceiling_section,
    "train_step": train_section,
    "encode": encode_section,
    "signal_cache": signal_section,
    "frozen_memory": memory_section,
    "dream": dream_section,
    "bm25_mining": bm25_summary_lines,
}


def write_summary(folder: Path) -> Path:
    parts = load_parts(folder)
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`python -m bench`); every figure is a median over "
        "repeats after warm-up, every ratio comes from runs interleaved in the same process.",
        "",
    ]
    if parts:
        lines += machine_section(parts)
    if "train_step" in parts and "ceiling" in parts:
        ceiling = parts["ceiling"]["result"]
        parts["train_step"]["result"]["ceiling_cpu_share"] = {
            dtype: ceiling[dtype]["timing"].get("cpu_share") for dtype in ("fp32", "bf16")
        }
    for name, section in SECTIONS.items():
        if name in parts:
            lines += section(parts[name]["result"])
    others = sorted(p.name for p in folder.glob("*.json") if p.stem not in SECTIONS)
    if others:
        known = {
            "rabtriever_cost.json": "`make bench-rabtriever`: Rabtriever student vs teacher cost",
            "rag_cost.json": "`make bench-rag`: cost of the downstream `callbacks=rag` evaluation",
        }
        lines += ["## Other benchmarks in this folder", ""]
        lines += [f"- `{name}`" + (f" ({known[name]})" if name in known else "") for name in others] + [""]
    path = folder / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path
