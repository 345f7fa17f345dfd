"""One enormous text: what embedding a 10 MB document costs with bounded tokenisation (issue 19, item 4).

all-MiniLM-L6-v2 (max length 128) embeds a normal paragraph and a ~10.8 MB one; the long one is cut to
12 characters per allowed token before tokenising (``retrieval/text.bounded_token_ids``), so it costs about
what a normal line costs and embeds like its own first 5,000 characters.

``python -m bench.long_text [--out bench/results/long_text.json]``
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "long_text.json"
NORMAL = "HotpotQA paragraph about a film director and the year of release. " * 3


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from experiments.cli import go_offline

    go_offline()
    import torch

    from bench.machine import machine_info
    from lightning_modules.models.embedder import Embedder

    torch.set_num_threads(2)
    embedder = Embedder("all-minilm-l6-v2", pooling="mean", max_length=128)
    embedder.encode([NORMAL], "document")  # warm-up
    before = peak_rss_mb()
    start = time.perf_counter()
    embedder.encode([NORMAL], "document")
    normal_s = time.perf_counter() - start
    big = NORMAL + "lorem ipsum dolor sit amet " * 400_000
    start = time.perf_counter()
    vector = embedder.encode([big], "document")
    big_s = time.perf_counter() - start
    prefix = embedder.encode([big[:5000]], "document")
    result = {
        "text_mb": round(len(big) / 1e6, 1),
        "seconds_normal_text": round(normal_s, 3),
        "seconds_long_text": round(big_s, 3),
        "peak_rss_growth_mb": round(peak_rss_mb() - before, 1),
        "equals_the_embedding_of_its_first_5000_characters": bool(torch.allclose(vector, prefix, atol=1e-5)),
        "machine": machine_info(),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
