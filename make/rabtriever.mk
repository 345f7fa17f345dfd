# Rabtriever: cost benchmark of the student (stored Z_d + predictor) against the teacher reranker.
.PHONY: bench-rabtriever bench-rabtriever-tiny

bench-rabtriever: install ## Rabtriever per-query cost vs stored docs and doc length -> bench/results/rabtriever_cost.json
	$(BIN)/python -m bench.rabtriever_cost $(ARGS)

bench-rabtriever-tiny: install ## Smoke-run the Rabtriever cost benchmark on the tiny random LM (seconds)
	$(BIN)/python -m bench.rabtriever_cost --tiny --out /tmp/rabtriever_cost_tiny.json
