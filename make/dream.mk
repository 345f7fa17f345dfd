# DREAM: train a retriever through selected attention heads of a frozen LM.
DREAM_EXP ?= dream_tiny

.PHONY: dream-train dream-smoke test-dream

dream-train: install ## Train a DREAM experiment: make dream-train [DREAM_EXP=dream_tiny|dream_tiny_minilm|dream_0.5b|dream_1b|dream_3b] [ARGS=...]
	$(BIN)/python -m experiments.train exp=$(DREAM_EXP) $(ARGS)

dream-smoke: install ## Smoke-run every DREAM experiment offline with tiny models (debug=tiny)
	for exp in dream_tiny dream_tiny_minilm dream_0.5b dream_1b dream_3b; do \
	  $(BIN)/python -m experiments.train exp=$$exp debug=tiny output_root=/tmp/lsr-smoke trainer.enable_progress_bar=false || exit 1; done

test-dream: install ## Run the DREAM tests
	$(BIN)/python -m pytest tests/test_dream_bias.py tests/test_dream_attention.py tests/test_dream_lm_loss.py tests/test_dream_module.py tests/test_dream_experiments.py -q
