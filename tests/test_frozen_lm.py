from lightning_modules.models.frozen_lm import FrozenCausalLM


def test_frozen_lm_has_no_trainable_parameters_and_stays_in_eval(tiny_llama_path):
    lm = FrozenCausalLM(tiny_llama_path)
    assert not any(p.requires_grad for p in lm.parameters())
    lm.train()
    assert not lm.training and not lm.model.training


def test_frozen_lm_alias_resolves_under_tiny():
    lm = FrozenCausalLM("smollm2-135m-instruct", tiny=True)
    assert lm.config.hidden_size == 64  # the tiny stand-in of the same family
