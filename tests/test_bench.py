"""Correctness of the benchmark helpers (no timed assertions): FLOP counts against hand counts, the
interleaved timer's call order, token counting, the two-pass attention against a one-sequence pass, and
the bf16 encode path of the embedder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.flops import count_flops, matmul_flops, utilisation
from bench.timing import summarize, time_interleaved


def test_linear_flops_match_hand_count_for_trainable_and_frozen_weights():
    batch, fan_in, fan_out = 8, 16, 32
    layer = torch.nn.Linear(fan_in, fan_out, bias=False)
    x = torch.randn(batch, fan_in, requires_grad=True)

    def step():
        layer(x).sum().backward()

    # forward x@W^T, backward grad_x and grad_W: three [8,16]x[16,32]-sized matmuls
    assert count_flops(step) == 3 * matmul_flops(batch, fan_in, fan_out) == 3 * 2 * batch * fan_in * fan_out
    layer.weight.requires_grad_(False)  # frozen weight: no grad_W matmul
    assert count_flops(step) == 2 * 2 * batch * fan_in * fan_out


def test_cpu_flash_attention_is_counted():
    batch, heads, length, dim = 2, 3, 16, 8
    q, k, v = (torch.randn(batch, heads, length, dim) for _ in range(3))
    # Q·K^T and P·V: two batched matmuls of 2·B·H·S·S·D each (the CPU kernel has no stock formula)
    one_matmul = 2 * batch * heads * length * length * dim
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == 2 * one_matmul
    # backward: recompute Q·K^T, then dV = P^T·dO, dP = dO·V^T, dQ = dS·K, dK = dS^T·Q: five more
    q.requires_grad_(True)
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()) == 7 * one_matmul


def test_utilisation_is_flops_over_time_over_ceiling_and_rejects_zero_time():
    assert utilisation(50e9, 0.5, 200e9) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="must be positive"):
        utilisation(1.0, 0.0, 1.0)


def test_time_interleaved_calls_round_robin_after_warmup():
    calls: list[str] = []
    timings = time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1
    )
    assert calls == ["a", "b"] * 4
    assert timings["a"].repeats == 3 and timings["a"].warmup == 1


def test_summarize_takes_the_median_and_needs_a_repeat():
    timing = summarize([3.0, 1.0, 2.0], warmup=0)
    assert (timing.median_s, timing.min_s, timing.max_s) == (2.0, 1.0, 3.0)
    with pytest.raises(ValueError, match="repeats must be"):
        summarize([], warmup=0)


def test_op_kind_groups_profiled_ops():
    from bench.train_step import op_kind

    assert op_kind("aten::mm") == "matmul"
    assert op_kind("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention/softmax"
    assert op_kind("aten::_to_copy") == "copy/cast/gather"
    assert op_kind("aten::mul") == "elementwise/other"


def test_token_counter_counts_each_model_call_once(tiny_llama_path):
    from transformers import AutoModelForCausalLM

    from bench.train_step import TokenCounter

    holder = torch.nn.Module()
    holder.lm = AutoModelForCausalLM.from_pretrained(tiny_llama_path)  # LlamaForCausalLM wraps a LlamaModel
    counter = TokenCounter(holder)
    ids = torch.ones(2, 5, dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    holder.lm(input_ids=ids, attention_mask=mask)
    assert (counter.positions, counter.non_padding) == (
        10,
        8,
    )  # the inner LlamaModel call is not counted again
    holder.lm.base_model(
        inputs_embeds=torch.zeros(1, 3, holder.lm.config.hidden_size)
    )  # methods call it directly
    assert (counter.positions, counter.non_padding) == (13, 11)
    counter.close()


def test_two_pass_with_one_document_equals_the_one_sequence_nll(tiny_llama_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.dream_injection import register_in_batch_attention, tokenize_two_pass, two_pass_loss

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_path)
    model = AutoModelForCausalLM.from_pretrained(
        tiny_llama_path, attn_implementation=register_in_batch_attention()
    )
    plain = AutoModelForCausalLM.from_pretrained(tiny_llama_path, attn_implementation="sdpa")
    batch = tokenize_two_pass(
        tokenizer, [["the film was made in paris"]], ["who made it"], ["a director"], separator=" "
    )
    cosines = torch.tensor([[0.3]], requires_grad=True)
    loss = two_pass_loss(model, batch, cosines, tau=0.1)
    # with one candidate the mixing weight is 1: the suffix attends to [document ; itself], as in one sequence
    sequence = torch.cat([batch["doc_ids"], batch["suffix_ids"]], dim=1)
    logits = plain(input_ids=sequence).logits[:, batch["doc_ids"].shape[1] :]
    expected = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_two_pass_gradient_reaches_the_cosines(tiny_llama_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.dream_injection import register_in_batch_attention, tokenize_two_pass, two_pass_loss

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_path)
    model = AutoModelForCausalLM.from_pretrained(
        tiny_llama_path, attn_implementation=register_in_batch_attention()
    )
    model.requires_grad_(False)
    docs = [["the film was made in paris", "a river in france"]]
    batch = tokenize_two_pass(tokenizer, docs, ["who made it"], ["a director"])
    cosines = torch.tensor([[0.2, 0.6]], requires_grad=True)
    two_pass_loss(model, batch, cosines, tau=0.1).backward()
    assert cosines.grad is not None and cosines.grad.abs().sum() > 0


def test_embedder_bf16_encode_uses_a_weight_copy_and_stays_close(tiny_llama_path):
    from lightning_modules.models.embedder import Embedder

    embedder = Embedder(tiny_llama_path, pooling="mean", lora={"r": 2})
    texts = ["the film was made in paris", "a river", "who made it"]
    fp32 = embedder.encode(texts, "document", batch_size=2)
    bf16 = embedder.encode(texts, "document", batch_size=2, precision="bf16")
    autocast = embedder.encode(texts, "document", batch_size=2, precision="bf16-autocast")
    assert all(p.dtype == torch.float32 for p in embedder.parameters())  # the model itself is untouched
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)  # really ran in bf16
    assert F.cosine_similarity(bf16, fp32).min() > 0.99
    assert F.cosine_similarity(autocast, fp32).min() > 0.99
    with pytest.raises(ValueError, match="unknown encode precision 'fp16'"):
        embedder.encode(texts, "document", precision="fp16")


def _step_run(size: str, dtype: str, seconds: float, mfu: float, loss: float, profile: bool = False) -> dict:
    run = {
        "method": "contrastive_minilm",
        "size": size,
        "step_dtype": dtype,
        "description": "MiniLM, 8 queries",
        "timing": {"median_s": seconds, "cpu_share": 0.5},
        "samples_per_s": 8 / seconds,
        "tokens_per_s": 1000.0,
        "counted_flops_per_step": 2e10,
        "mfu_vs_fp32": mfu,
        "mfu_vs_bf16": mfu / 5,
        "peak_rss_mb": 900.0,
        "loss_of_first_timed_batch": loss,
    }
    if profile:
        run["profile"] = {
            "share_by_kind": {"matmul": 0.5, "elementwise/other": 0.5},
            "top_ops": [{"op": "aten::mm", "share": 0.4, "calls": 10}],
        }
    return run


def test_train_summary_judges_the_mfu_goal_and_compares_bf16_with_fp32():
    from bench.report import train_section

    runs = [
        _step_run("small", "fp32", 2.0, 0.25, 1.00, profile=True),
        _step_run("small_bf16", "bf16", 1.0, 0.1, 1.02),
    ]
    text = "\n".join(train_section({"runs": runs, "ceiling_cpu_share": {"fp32": 1.0, "bf16": 1.0}}))
    assert "MFU goal ≥ 40%: MISSED (25.0% of the fp32 ceiling)" in text
    assert "Profile of one step (CPU self time): matmul 50%, elementwise/other 50%" in text
    assert "2.00× the fp32 step's speed" in text and "(2.00%)" in text
    assert "| 50.0% |" in text  # MFU rescaled by the ceiling's cpu share (1.0) over the step's (0.5)
