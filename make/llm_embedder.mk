# LLM-Embedder: teacher scoring once, then training runs that read the score cache.
LLME_EXP ?= llm_embedder_tiny

.PHONY: llm-embedder-score llm-embedder-agreement llm-embedder-train llm-embedder-smoke test-llm-embedder

llm-embedder-score: install ## Compute/confirm the teacher-score cache of an LLM-Embedder exp: make llm-embedder-score [LLME_EXP=...] [ARGS=...]
	$(BIN)/python -m experiments.llm_embedder_prescore exp=$(LLME_EXP) $(ARGS)

llm-embedder-agreement: install ## Teacher vs student: how often each puts a gold candidate first (lab check, uses labels) [CKPT=last.ckpt]
	$(BIN)/python -m experiments.llm_embedder_agreement exp=$(LLME_EXP) data.tasks.qa.use_labels=true $(ARGS) $(if $(CKPT),--checkpoint $(CKPT))

llm-embedder-train: install ## Train an LLM-Embedder exp (both rewards: ARGS=model.teacher.reward=rank_aware)
	$(BIN)/python -m experiments.train exp=$(LLME_EXP) $(ARGS)

llm-embedder-smoke: install ## Smoke-run every LLM-Embedder experiment offline with tiny models (seconds each)
	for exp in llm_embedder_tiny llm_embedder_tiny_minilm llm_embedder_base; do \
	  $(BIN)/python -m experiments.train exp=$$exp debug=tiny output_root=/tmp/lsr-smoke trainer.enable_progress_bar=false || exit 1; done

test-llm-embedder: install ## Run the LLM-Embedder and distillation tests
	$(BIN)/python -m pytest tests/test_distillation.py tests/test_llm_embedder_teacher.py tests/test_llm_embedder_data.py tests/test_llm_embedder_module.py tests/test_llm_embedder_agreement.py -q
