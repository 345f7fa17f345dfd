# MTEB evaluation and the results report (docs/evaluation.md).
TASKS ?= hotpotqa@dev
CKPT ?=

.PHONY: eval report

eval: install ## MTEB on a run/export/.ckpt/model: make eval [EXP=name] [CKPT=path|model] [TASKS=hotpotqa@dev,/data/scifact@test] [ARGS=--precision bf16]
	$(BIN)/python -m experiments.evaluate --exp "$(EXP)" --tasks "$(TASKS)" $(if $(CKPT),--model "$(CKPT)") $(ARGS)

report: install ## Claims table (lab_results/claims.yaml) + table + PNG plots of every run under runs/ (or $LSR_OUTPUT_ROOT): make report [ARGS="--output-root lab_results --out DIR --claims MAP"]
	$(BIN)/python -m experiments.report $(ARGS)
