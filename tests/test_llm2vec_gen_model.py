"""The LLM2VecGenModule module on tiny models: what trains, what the decoder sees, the loss parts, checkpoints."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from datamodules.batch import RetrievalBatch
from datamodules.unlabeled_queries import UnlabeledQueryDataModule
from lightning_modules.llm2vec_gen.generation import Response
from lightning_modules.llm2vec_gen.module import LLM2VecGenModule

TRAINABLE = {
    "special_tokens",
    "reconstruction_head.weight",
    "reconstruction_head.bias",
    "alignment_head.weight",
    "alignment_head.bias",
}


def build_module(**overrides) -> LLM2VecGenModule:
    torch.manual_seed(0)
    args = dict(
        frozen_lm={"name_or_path": "tiny-llama"},
        teacher={"name_or_path": "tiny-bert", "pooling": "mean", "max_length": 64},
        num_special_tokens=3,
        max_query_tokens=16,
        max_document_tokens=16,
        max_response_tokens=6,
        generation={"max_new_tokens": 4, "batch_size": 8},
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.1),
        eval_batch_size=4,
    )
    args.update(overrides)
    return LLM2VecGenModule(**args)


@pytest.fixture(scope="module")
def module() -> LLM2VecGenModule:
    return build_module()


def test_only_special_tokens_and_heads_change_after_an_optimizer_step(tmp_path):
    module = build_module()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    datamodule = UnlabeledQueryDataModule(tiny=True, batch_size=4, seed=0)
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, datamodule=datamodule)
    after = module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == TRAINABLE
    assert {n for n, p in module.named_parameters() if p.requires_grad} == TRAINABLE
    optimizer = trainer.optimizers[0]
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decay_of[id(module.special_tokens)] == 0.0
    assert decay_of[id(module.alignment_head.weight)] == 0.1
    assert (tmp_path / "generation.json").exists()
    assert len(module.responses) == len(datamodule.train_queries)


def test_loss_parts_match_a_hand_computation_on_the_frozen_lm(module):
    queries = ["who wrote the song", "what is the capital of the country"]
    responses = [Response("the song was written by", 5, True), Response("the capital", 2, False)]
    teacher = torch.randn(2, module.teacher.dim)
    parts = module.losses(queries, responses, teacher)

    tokenizer, lm = module.frozen_lm.tokenizer, module.frozen_lm.model
    soft_prompt, embedding = module.represent(queries, "query")
    nll_sum, count = 0.0, 0
    for row, response in enumerate(responses):
        ids = tokenizer(response.text, add_special_tokens=False)["input_ids"]
        ids = ids + [tokenizer.eos_token_id] if response.finished else ids
        inputs = torch.cat([soft_prompt[row], lm.get_input_embeddings()(torch.tensor(ids))], dim=0).unsqueeze(
            0
        )
        log_probs = lm(inputs_embeds=inputs).logits[0].log_softmax(-1)  # one unpadded sequence
        k = soft_prompt.shape[1]
        for t, token in enumerate(ids):
            nll_sum -= log_probs[k - 1 + t, token].item()
            count += 1
    assert parts["reconstruction"].item() == pytest.approx(nll_sum / count, rel=1e-4)
    assert parts["alignment"].item() == pytest.approx(((embedding - teacher) ** 2).mean().item(), rel=1e-5)
    assert parts["loss"].item() == pytest.approx(
        parts["reconstruction"].item() + parts["alignment"].item(), rel=1e-6
    )
    weighted = build_module(reconstruction_weight=0.5, alignment_weight=2.0).losses(
        queries, responses, teacher
    )
    assert weighted["loss"].item() == pytest.approx(
        0.5 * weighted["reconstruction"].item() + 2 * weighted["alignment"].item(), rel=1e-5
    )


def test_the_decoder_reads_only_the_soft_prompt_and_the_response(module):
    seen = []
    hook = module.frozen_lm.model.base_model.register_forward_hook(
        lambda mod, args, kwargs, out: seen.append(kwargs["inputs_embeds"].detach().clone()), with_kwargs=True
    )
    try:
        query = "who wrote the song about the river in the country"
        module.losses([query], [Response("the song", 2, True)], torch.zeros(1, module.teacher.dim))
    finally:
        hook.remove()
    encoder_inputs, decoder_inputs = seen
    soft_prompt, _ = module.represent([query], "query")
    response_ids = module.frozen_lm.tokenizer("the song", add_special_tokens=False)["input_ids"]
    k = module.num_special_tokens
    assert decoder_inputs.shape[1] == k + len(response_ids)  # [s_1..s_K ; y_1 .. y_T] (EOS is only a target)
    assert torch.allclose(decoder_inputs[0, :k], soft_prompt[0], atol=1e-6)
    assert encoder_inputs.shape[1] > decoder_inputs.shape[1]  # the query went into the encoding pass only
    assert torch.equal(encoder_inputs[0, -k:], module.special_tokens.detach())


def test_gradient_reaches_the_special_tokens_through_the_frozen_lm():
    module = build_module()
    parts = module.losses(
        ["who wrote the song"], [Response("the song", 2, True)], torch.zeros(1, module.teacher.dim)
    )
    parts["reconstruction"].backward()
    assert module.special_tokens.grad is not None and module.special_tokens.grad.abs().sum() > 0
    assert module.reconstruction_head.weight.grad.abs().sum() > 0
    assert module.alignment_head.weight.grad is None  # reconstruction alone does not touch the alignment head
    assert all(p.grad is None for p in module.frozen_lm.parameters())


def test_left_padding_does_not_change_an_embedding(module):
    short, long = "who wrote the song", "what is the capital of the country where the river is"
    alone = module.encode_queries([short])
    batched = module.encode_queries([long, short])
    assert torch.allclose(alone[0], batched[1], atol=1e-5)
    assert torch.allclose(batched.norm(dim=-1), torch.ones(2), atol=1e-5)
    documents = module.encode_documents([short])
    assert not torch.allclose(documents[0], alone[0]), "documents use their own instruction"


def test_teacher_only_sees_the_response_texts(module, monkeypatch, tmp_path):
    monkeypatch.setenv("LSR_CACHE_DIR", str(tmp_path))
    seen: list[str] = []
    original = module.teacher.encode

    def spy(texts, kind, **kwargs):
        seen.extend(texts)
        return original(texts, kind, **kwargs)

    monkeypatch.setattr(module.teacher, "encode", spy)
    module.prepare_responses(["a", "b"], ["who wrote the song", "where is the river"], show_progress=False)
    assert seen == [module.responses["a"].text, module.responses["b"].text]
    specials = module.frozen_lm.tokenizer.all_special_tokens
    assert not any(tok in text for text in seen for tok in specials)
    assert module.teacher_targets["a"].shape == (module.teacher.dim,)


def test_checkpoints_hold_neither_the_frozen_lm_nor_the_teacher(module):
    checkpoint = {"state_dict": dict(module.state_dict())}
    module.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == TRAINABLE
    fresh = build_module(special_token_init_std=2.0)
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])
    assert torch.equal(fresh.special_tokens, module.special_tokens)
    texts = ["who wrote the song"]
    assert torch.allclose(fresh.encode_queries(texts), module.encode_queries(texts), atol=1e-6)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="num_special_tokens"):
        build_module(num_special_tokens=0)
    with pytest.raises(ValueError, match="reconstruction_init"):
        build_module(reconstruction_init="zeros")
    with pytest.raises(ValueError, match="generation.instruction"):
        build_module(generation={"instruction": "x"})


def test_only_the_last_pooled_special_tokens_represent_the_text():
    """num_special_tokens=K appended, num_pooled_tokens=N pooled (the reference's V1: 20 / last 10)."""
    wide = build_module(num_special_tokens=4, num_pooled_tokens=2)
    prompt = wide.prompt_tokens(["who wrote the song"], "query")
    states = wide.prompt_states(prompt)
    assert states.shape[1] == 2
    soft_prompt, embedding = wide.represent(["who wrote the song"], "query")
    assert soft_prompt.shape[1] == 2 and embedding.shape == (1, wide.teacher.dim)
    everything = build_module(num_special_tokens=4)  # same seed: same special tokens, all 4 pooled
    assert torch.allclose(everything.prompt_states(prompt)[:, -2:], states, atol=1e-6)
    with pytest.raises(ValueError, match="num_pooled_tokens must be between 1 and model.num_special_tokens"):
        build_module(num_special_tokens=4, num_pooled_tokens=5)


def test_chat_prompts_ask_qwen3_for_no_thinking():
    from transformers import AutoTokenizer

    from lightning_modules.llm2vec_gen.prompts import PromptBuilder
    from lightning_modules.models.registry import smollm2_folder

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder())
    tokenizer.chat_template = (  # the part of Qwen3's template that reads the flag
        "{% for m in messages %}<|im_start|>user\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n"
        "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
        "{% endif %}"
    )
    builder = PromptBuilder(tokenizer, use_chat_template=True, max_text_tokens=16)
    assert tokenizer.decode(builder.suffix_ids).endswith("assistant\n<think>\n\n</think>\n\n")


def test_identity_reconstruction_init_passes_the_states_through(module):
    states = module.special_token_states(["who wrote the song"], "query")
    soft_prompt, _ = module.represent(["who wrote the song"], "query")
    assert torch.allclose(soft_prompt, states, atol=1e-6)
    assert F.cosine_similarity(module.special_tokens[0], module.special_tokens[1], dim=0) < 0.99


def test_debug_tiny_caps_the_response_budget():
    from lightning_modules.llm2vec_gen.module import TINY_MAX_NEW_TOKENS

    assert build_module(generation={"max_new_tokens": 500}).generation_settings.max_new_tokens == 500
    capped = build_module(
        generation={"max_new_tokens": 500}, frozen_lm={"name_or_path": "tiny-llama", "tiny": True}
    )
    assert capped.generation_settings.max_new_tokens == TINY_MAX_NEW_TOKENS


def test_a_preparer_made_before_the_responses_exist_still_sees_them(tmp_path, monkeypatch):
    """Lightning may build the train loader (and its collator) before on_fit_start generates the responses."""
    monkeypatch.setenv("LSR_CACHE_DIR", str(tmp_path))
    module = build_module()
    preparer = module.batch_preparer()
    module.prepare_responses(["a", "b"], ["who wrote the song", "where is the river"], show_progress=False)
    batch = RetrievalBatch(
        query_ids=["b", "a"],
        queries=["where is the river", "who wrote the song"],
        documents=[[], []],
        document_ids=[[], []],
        document_codes=torch.empty(2, 0, dtype=torch.long),
    )
    inputs = preparer(batch).lm_inputs
    assert torch.equal(
        inputs.teacher_targets, torch.stack([module.teacher_targets["b"], module.teacher_targets["a"]])
    )
    torch.testing.assert_close(
        module.step_losses(inputs)["loss"],
        module.losses(batch.queries, [module.responses["b"], module.responses["a"]], inputs.teacher_targets)[
            "loss"
        ],
    )
    with pytest.raises(KeyError, match="no cached response"):
        preparer(RetrievalBatch(["c"], ["new"], [[]], [[]], torch.empty(1, 0, dtype=torch.long)))


def test_a_raw_student_prompt_embeds_the_text_alone_at_training_and_evaluation():
    """student_prompt=raw (the reference's training input): BOS + the text, no template, no instruction;
    the responses are still generated from the chat prompt with the query instruction."""
    chat, raw = build_module(), build_module(student_prompt="raw")
    tokenizer = raw.frozen_lm.tokenizer
    text = "who wrote the song"
    ids = raw.prompt_tokens([text], "query").input_ids[0].tolist()
    body = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    assert ids == bos + body
    instruction = tokenizer(chat.settings.query_instruction, add_special_tokens=False)["input_ids"]
    assert len(chat.prompt_tokens([text], "query").input_ids[0]) >= len(bos + body) + len(instruction) - 1
    assert raw.batch_preparer().instruction == "" and chat.batch_preparer().instruction != ""
    assert raw.generation_settings == chat.generation_settings  # the same responses (and cache key)
    response = Response(text="a short answer", num_tokens=3, finished=True)
    targets = torch.zeros(1, raw.teacher.dim)
    losses = raw.losses([text], [response], targets)
    losses["loss"].backward()
    assert raw.special_tokens.grad is not None and raw.special_tokens.grad.abs().sum() > 0
