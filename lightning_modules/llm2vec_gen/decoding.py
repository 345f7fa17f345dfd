"""What an LLM2Vec-Gen embedding "says": greedy text from a text's soft prompt through the frozen decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import GenerationConfig

from lightning_modules.llm2vec_gen.generation import end_of_response_ids, strip_special_strings
from lightning_modules.llm2vec_gen.module import Kind, LLM2VecGenModule
from lightning_modules.llm2vec_gen.prompts import pad_token_id


@torch.no_grad()
def decode(
    module: LLM2VecGenModule, texts: Sequence[str], kind: Kind = "query", max_new_tokens: int = 64
) -> list[str]:
    """Greedy decoding from ``[soft prompt]`` alone (the query itself is not in the decoder's context)."""
    was_training = module.training
    module.eval()
    soft_prompt, _ = module.represent(list(texts), kind)
    lm, tokenizer = module.frozen_lm.model, module.frozen_lm.tokenizer
    eos_ids = end_of_response_ids(tokenizer, lm)
    inputs = soft_prompt.to(lm.get_input_embeddings().weight.dtype)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos_ids,
        pad_token_id=pad_token_id(tokenizer),
    )
    mask = torch.ones(inputs.shape[:2], dtype=torch.long, device=inputs.device)
    output = lm.generate(inputs_embeds=inputs, attention_mask=mask, generation_config=config)
    module.train(was_training)
    texts_out = []
    for row in output.tolist():  # with inputs_embeds only, generate returns just the new tokens
        stop = next((i for i, tok in enumerate(row) if tok in eos_ids), len(row))
        texts_out.append(
            strip_special_strings(tokenizer.decode(row[:stop], skip_special_tokens=True), tokenizer)
        )
    return texts_out
