# LLM2Vec-Gen decoding: what a query's special-token embedding "says", through the frozen decoder.
CKPT ?=
TEXT ?=
KIND ?= query
MAX_NEW_TOKENS ?= 64

.PHONY: decode

decode: install ## Decode LLM2Vec-Gen special tokens to text: make decode CKPT=<ckpt or run dir> TEXT="a query" [KIND=query|document]
	@test -n "$(CKPT)" || { echo 'usage: make decode CKPT=<checkpoint or run dir> TEXT="a query"'; exit 2; }
	@test -n "$(TEXT)" || { echo 'usage: make decode CKPT=<checkpoint or run dir> TEXT="a query"'; exit 2; }
	$(BIN)/python -m experiments.decode --ckpt "$(CKPT)" --text "$(TEXT)" --kind $(KIND) --max-new-tokens $(MAX_NEW_TOKENS)
