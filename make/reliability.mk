# Reliability and safety (docs/reliability.md): kill/resume, preemption, atomic caches, bad-input messages.
.PHONY: test-reliability

test-reliability: install ## Fault-injection and bad-input tests (kill -9 + resume, SIGUSR1 preemption, corrupt caches, bad files/configs)
	$(BIN)/python -m pytest tests/test_reliability_*.py -q $(ARGS)
