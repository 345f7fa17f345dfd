# Benchmarks (docs/performance.md): throughput, memory and FLOPs utilisation against the machine's own ceiling.
BENCH_ARGS ?=

.PHONY: bench bench-quick

bench: install ## Run every benchmark (est. 15 min on 2 idle cores); writes bench/results/*.json + summary.md [BENCH_ARGS="--only encode,dream"]
	$(BIN)/python -m bench $(BENCH_ARGS)
	@if $(MAKE) -n bench-rabtriever >/dev/null 2>&1; then $(MAKE) --no-print-directory bench-rabtriever; fi

bench-quick: install ## Smoke-run every benchmark at tiny sizes into /tmp/lsr-bench-quick (numbers not for quoting)
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

.PHONY: bench-llm-embedder-setup

bench-llm-embedder-setup: install ## LLM-Embedder chat setup on 100k synthetic turns (copied vs shared keys) and a step's teacher lookup -> bench/results/llm_embedder_task_setup.json
	$(BIN)/python -m bench.llm_embedder_task_setup $(ARGS)

.PHONY: bench-rag bench-rag-tiny

bench-rag: install ## Cost of callbacks=rag in the lab setting (SmolLM2-135M, 100 HotpotQA dev questions, k=3, 1 thread) -> bench/results/rag_cost.json
	$(BIN)/python -m bench.rag_cost $(ARGS)

bench-rag-tiny: install ## Smoke-run the RAG cost benchmark on the tiny random LM (seconds)
	$(BIN)/python -m bench.rag_cost --tiny --out /tmp/rag_cost_tiny.json

.PHONY: bench-eval bench-scale

LABEL ?= after
THREADS ?= 2

bench-eval: install ## Lab speed: one SmolLM2 full-corpus evaluation (exp=dream_tiny, HotpotQA dev) + a cached re-evaluation -> bench/results/eval_speed.json [LABEL=after THREADS=2]
	$(BIN)/python -m bench.eval_speed --label $(LABEL) --threads $(THREADS) $(ARGS)

bench-scale: install ## Exact top-100 search of a synthetic 1M x 768 corpus, e6e78c3's path vs the sharded half-precision one: time, peak RSS -> bench/results/scale_search.json
	$(BIN)/python -m bench.scale_search --threads $(THREADS) $(ARGS)
