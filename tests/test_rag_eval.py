"""The downstream evaluation (``callbacks=rag``): SQuAD answer metrics, the one-prefill reader against
one-sequence passes, a hand-built example where retrieval decides the answer (the current row equals the
oracle row for a retriever that finds the gold paragraph, and sits near the no-retrieval row for one that
finds junk), cached reference rows (LM reads counted), config errors, and a ``debug=tiny`` training run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from callbacks.rag_eval import RagEvaluation
from callbacks.rag_reader import read
from callbacks.retrieval_eval import RetrievalEvaluation
from datamodules.retrieval import RetrievalDataModule
from experiments.config_check import ConfigError, check_config
from experiments.report_collect import collect_run
from lightning_modules.models.frozen_lm import load_frozen_lm
from retrieval.answers import best_match, exact_match, normalize_answer, token_f1
from tests.helpers import compose_config, run_experiment
from tests.rag_fixtures import (
    QUESTIONS,
    DumpRagState,
    build_copy_lm,
    gold_id,
    junk_id,
    retriever_for,
    small_llama,
    write_qa_folder,
)


def test_squad_normalisation_exact_match_and_f1_against_hand_computed_values():
    assert normalize_answer("The  Kansas-Song!") == "kansassong"
    assert normalize_answer("An apple, a day") == "apple day"
    assert exact_match("the Kansas Song.", "Kansas song") == 1.0
    assert exact_match("Kansas", "Kansas Song") == 0.0
    # [kansas, song] vs [kansas, song, of, ku]: P = 1, R = 1/2
    assert token_f1("the Kansas song", "Kansas Song of KU") == pytest.approx(2 / 3)
    # [in, paris, france] vs [paris]: P = 1/3, R = 1 → F1 = 1/2
    assert token_f1("in Paris, France", "Paris") == pytest.approx(0.5)
    assert token_f1("a", "the") == 1.0  # both normalise to nothing (SQuAD v2's rule)
    assert token_f1("", "Paris") == 0.0
    assert token_f1("paris paris", "paris") == pytest.approx(2 * 0.5 * 1 / 1.5)  # counts, not sets
    assert best_match("in Paris", ["London", "Paris"]) == (0.0, pytest.approx(2 / 3))
    assert best_match("paris", ["London", "The Paris"]) == (1.0, 1.0)
    with pytest.raises(ValueError, match="at least one gold answer"):
        best_match("x", [])


def sharp_random_lm(tokenizer) -> LlamaForCausalLM:
    """A random 2-layer Llama with large weights: its next token depends on the whole context (the tiny
    models' small init mostly repeats the last token, which would hide a misplaced cache)."""
    torch.manual_seed(0)
    return small_llama(tokenizer, hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64, init=0.5)


def test_one_prefill_batched_reader_equals_one_sequence_at_a_time(tiny_llama_path):
    _, tokenizer = load_frozen_lm(tiny_llama_path)
    model = sharp_random_lm(tokenizer)
    texts = (
        "the river is long and the city is big . what is",
        "a city",
        "kansas song is the fight song of the university of kansas . what",
    )
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    answers = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("kansas song", "the", "a b c d")]
    batched = read(model, tokenizer, ids, answers, batch_size=3, max_new_tokens=6)
    generations = set()
    for prompt, answer, (nll, generation) in zip(ids, answers, batched):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + answer])).logits[0]
            log_probs = F.log_softmax(logits[len(prompt) - 1 : -1].float(), dim=-1)
            expected = -log_probs.gather(1, torch.tensor(answer)[:, None]).mean()
            alone = model.generate(
                input_ids=torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=6,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )[0, len(prompt) :]
        assert nll == pytest.approx(float(expected), abs=1e-4)
        assert generation == tokenizer.decode(alone, skip_special_tokens=True).strip()
        generations.add(generation)
    assert len(generations) == len(texts), "the check needs generations that depend on the prompt"


def validate(tmp_path, folder, kind: str, callbacks: list[L.Callback], run: str | None = None) -> L.Trainer:
    """``trainer.validate`` of the ``kind`` (gold / junk) lookup retriever in ``tmp_path/<run or kind>``."""
    data = RetrievalDataModule(path=str(folder), qa_file=None, train_split="dev", eval_split="dev")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path / (run or kind)),
    )
    trainer.validate(retriever_for(kind), datamodule=data, verbose=False)
    return trainer


def rag_callbacks(lm_path, **kwargs) -> list[L.Callback]:
    rag = RagEvaluation(
        top_k=1, lm={"name_or_path": str(lm_path), "dtype": "float32"}, max_new_tokens=1, **kwargs
    )
    return [RetrievalEvaluation(cache_untrained=False, show_progress=False), rag]


def test_retrieval_moves_the_answer_nll_between_the_oracle_and_no_retrieval_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("LSR_CACHE_DIR", str(tmp_path / "cache"))
    folder, lm_path = write_qa_folder(tmp_path / "qa"), build_copy_lm(tmp_path)
    count = len(QUESTIONS)

    gold_callbacks = rag_callbacks(lm_path)
    gold = validate(tmp_path, folder, "gold", gold_callbacks).callback_metrics
    rag = gold_callbacks[1]
    step = json.loads((tmp_path / "gold" / "eval" / "rag_step_000000.json").read_text())
    assert step["source"] == "retrieval_eval"  # the ranking of RetrievalEvaluation, not a second encoding
    assert [r["documents"] for r in step["per_question"]] == [[gold_id(q[0])] for q in QUESTIONS]
    # the current retriever finds the gold paragraph: its row is the oracle row
    for metric in ("answer_nll", "em", "f1"):
        assert float(gold[f"rag/{metric}"]) == pytest.approx(
            float(gold[f"rag/ref/oracle/{metric}"]), abs=1e-6
        )
    # greedy answers with one token: vexa, talsen, kello (the article is normalised away), cobalt vs "pale cobalt"
    assert float(gold["rag/em"]) == pytest.approx(3 / 4)
    assert float(gold["rag/f1"]) == pytest.approx((1 + 1 + 1 + 2 / 3) / 4)
    assert float(gold["rag/ref/none/em"]) == 0.0
    oracle, none = float(gold["rag/ref/oracle/answer_nll"]), float(gold["rag/ref/none/answer_nll"])
    assert oracle < none - 2.0, "the LM's answer NLL must drop when the gold paragraph is in the prompt"
    assert float(gold["rag/ref/bm25/answer_nll"]) == pytest.approx(oracle)  # BM25 finds each gold paragraph
    # references: none + bm25 read every question; oracle and the current row are the bm25 prompts again
    assert rag.reader.lm_items == 2 * count

    junk_callbacks = rag_callbacks(lm_path)
    junk = validate(tmp_path, folder, "junk", junk_callbacks).callback_metrics
    junk_nll = float(junk["rag/answer_nll"])
    assert json.loads((tmp_path / "junk" / "eval" / "rag_step_000000.json").read_text())["per_question"][0][
        "documents"
    ] == [junk_id("q0")]
    assert junk_nll > oracle + 2.0 and float(junk["rag/em"]) == 0.0
    assert abs(junk_nll - none) < abs(none - oracle) / 2, "junk documents help about as much as none"
    # a new callback, same settings: the reference rows come from the disk cache, only the current row is read
    assert junk_callbacks[1].references["oracle"]["cached"] is True
    assert junk_callbacks[1].reader.lm_items == count
    assert float(junk["rag/ref/oracle/answer_nll"]) == pytest.approx(oracle)

    summary = junk_callbacks[1].results_summary()["rag"]
    assert summary["before"]["answer_nll"] == pytest.approx(junk_nll)
    assert set(summary["references"]) == {"none", "bm25", "oracle"} and summary["questions"] == count


def test_the_start_row_is_cached_per_module_key(tmp_path, monkeypatch):
    monkeypatch.setenv("LSR_CACHE_DIR", str(tmp_path / "cache"))
    folder, lm_path = write_qa_folder(tmp_path / "qa"), build_copy_lm(tmp_path)
    first = validate(tmp_path, folder, "gold", rag_callbacks(lm_path), "first").callback_metrics
    again = rag_callbacks(lm_path)
    second = validate(tmp_path, folder, "gold", again, "second").callback_metrics
    assert again[1].reader.lm_items == 0  # references and the step-0 row both from the disk cache
    assert (
        json.loads((tmp_path / "second" / "eval" / "rag_step_000000.json").read_text())["source"] == "cache"
    )
    assert float(second["rag/answer_nll"]) == pytest.approx(float(first["rag/answer_nll"]))
    junk = rag_callbacks(lm_path)
    validate(tmp_path, folder, "junk", junk)  # another module key: its own start row
    assert junk[1].reader.lm_items == len(QUESTIONS)


def test_a_changed_prompt_setting_misses_the_reference_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LSR_CACHE_DIR", str(tmp_path / "cache"))
    folder, lm_path = write_qa_folder(tmp_path / "qa"), build_copy_lm(tmp_path)
    first = rag_callbacks(lm_path)
    validate(tmp_path, folder, "gold", first)
    again = rag_callbacks(lm_path, document_max_tokens=4)
    validate(tmp_path, folder, "gold", again)
    assert "cached" not in again[1].references["none"]
    assert again[1].reader.lm_items == 2 * len(QUESTIONS)


def test_debug_tiny_run_with_callbacks_rag_writes_rag_results(tmp_path):
    results = run_experiment(
        [
            "exp=default",
            "debug=tiny",
            "callbacks=rag",
            "callbacks.rag.max_questions=3",
            "trainer.max_steps=1",
        ],
        tmp_path,
    )
    run_dir = Path(results["run_dir"])
    rag = json.loads((run_dir / "results.json").read_text())["rag"]
    assert rag["questions"] == 3 and rag["top_k"] == 3
    for row in (rag["before"], rag["after"], *rag["references"].values()):
        assert set(row) == {"answer_nll", "em", "f1"} and row["answer_nll"] > 0
    assert set(rag["references"]) == {"none", "bm25", "oracle"}
    assert [h["step"] for h in rag["history"]] == [0, 1]
    eval_dir = run_dir / "eval"
    assert (eval_dir / "rag_step_000001.json").exists() and (eval_dir / "rag_references.json").exists()
    # results.json keeps the per-step series, so a lab_results copy still plots once the run dir is gone
    stored = json.loads((run_dir / "results.json").read_text())
    assert stored["eval_set"] == "tiny_hotpotqa-dev"
    assert [h["step"] for h in stored["eval_history"]] == [0, 1] and "ndcg@10" in stored["eval_history"][1]
    lab_copy = tmp_path / "lab_results" / "default.json"
    lab_copy.parent.mkdir()
    lab_copy.write_text(json.dumps({**stored, "run_dir": str(tmp_path / "gone")}))
    from_dir, _ = collect_run(run_dir / "results.json")
    from_copy, start = collect_run(lab_copy)
    assert from_copy.curves == from_dir.curves and from_copy.rag_curves == from_dir.rag_curves
    assert [s for s, _ in from_copy.rag_curves["tiny_hotpotqa-dev"]] == [0, 1]
    assert start.scores["tiny_hotpotqa-dev"]["rag/answer_nll"] == rag["before"]["answer_nll"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["callbacks.rag.precision=fp16"], "callbacks.rag: precision must be one of fp32, bf16"),
        (["callbacks.rag.top_k=0"], "callbacks.rag: top_k must be a positive integer"),
        (["callbacks.rag.template=no placeholders"], "template must contain {documents} and {question}"),
        (["+callbacks.rag.lm.dtyp=bf16"], "lm has unknown key"),
        (["callbacks.rag.use_module_lm=true"], "model.frozen_lm is null"),
        (
            ["exp=dream_tiny", "trainer=fsdp", "callbacks.rag.use_module_lm=true"],
            "callbacks.rag.use_module_lm=true cannot read with the FSDP-sharded frozen LM",
        ),
        (["callbacks.rag.lm.name_or_path=/no/such/lm"], "callbacks.rag.lm.name_or_path='/no/such/lm'"),
    ],
)
def test_bad_rag_settings_are_refused_with_the_key(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_config(compose_config(["exp=default", "callbacks=rag", *overrides]))  # a later exp= wins


@pytest.mark.slow
def test_two_processes_share_the_questions_and_log_the_one_process_numbers(tmp_path, monkeypatch):
    from tests.test_scale_ddp import trainer_from_config

    monkeypatch.setenv("LSR_CACHE_DIR", str(tmp_path / "cache"))
    folder, lm_path = write_qa_folder(tmp_path / "qa"), build_copy_lm(tmp_path)
    single = validate(tmp_path, folder, "gold", rag_callbacks(lm_path, cache_references=False), "single")
    single = single.callback_metrics
    data = RetrievalDataModule(path=str(folder), qa_file=None, train_split="dev", eval_split="dev")
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    trainer = trainer_from_config(
        "ddp_spawn",
        callbacks=[*rag_callbacks(lm_path), DumpRagState(str(dumps))],
        default_root_dir=str(tmp_path),
    )
    trainer.validate(retriever_for("gold"), datamodule=data)  # each rank reads half the questions
    records = [json.loads(p.read_text()) for p in sorted(dumps.glob("*.json"))]
    assert len(records) == 2
    for record in records:
        assert record["metrics"].keys() == {k for k in single if k.startswith("rag/")}
        for key, value in record["metrics"].items():
            assert value == pytest.approx(float(single[key]), abs=1e-5), key
        # its own shard of the none and bm25 rows (oracle and current prompts repeat the bm25 ones)
        assert record["lm_items"] == 2 * (len(QUESTIONS) // 2)
        assert not record["references_cached"]
