# Benchmarks (issue 9, docs/performance.md): throughput, memory and FLOPs utilisation against the machine's own ceiling.
BENCH_ARGS ?=

.PHONY: bench bench-quick

bench: install ## Run every benchmark (est. 15 min on 2 idle cores); writes bench/results/*.json + summary.md [BENCH_ARGS="--only encode,dream"]
	$(BIN)/python -m bench $(BENCH_ARGS)
	@if $(MAKE) -n bench-rabtriever >/dev/null 2>&1; then $(MAKE) --no-print-directory bench-rabtriever; fi

bench-quick: install ## Smoke-run every benchmark at tiny sizes into /tmp/lsr-bench-quick (numbers not for quoting)
	$(BIN)/python -m bench --quick $(BENCH_ARGS)
