# Staged pipelines (docs/stages.md): the stages run inside `make train`; this measures their step cost.
.PHONY: bench-stages

bench-stages: install ## Seconds per step of the lab's pipeline stages on SmolLM2, one thread -> bench/results/stage_steps.json
	$(BIN)/python -m bench.stage_steps --threads 1
