# Memory plan (docs/scale.md, "On a cluster"): per-GPU memory of one training step, counted on the meta device.
GPUS ?= 8
TRAINER ?= ddp

.PHONY: plan plan-all

plan: install ## Per-GPU memory plan of a recipe (no GPU, no download): make plan EXP=dream_3b [GPUS=8] [TRAINER=ddp|fsdp] [ARGS="k=v ..."]
	$(BIN)/python -m bench.plan $(EXP) --gpus $(GPUS) --trainer $(TRAINER) $(ARGS)

PLAN_RECIPES ?= dream_0.5b dream_1b dream_3b llm_embedder_base llm2vec_gen_qwen3_0.6b llm2vec_gen_qwen2.5_1.5b rabtriever_qwen2_7b

plan-all: install ## Plan every cluster recipe on its own GPU count (trainer.devices; auto = 8) and write bench/results/plan_<exp>.json
	@for exp in $(PLAN_RECIPES); do $(BIN)/python -m bench.plan $$exp --write || exit $$?; done
