"""Evaluation at scale: exact top-100 search of a synthetic ≥1M × 768 corpus, today's path against the sharded one.

Each variant runs in its own process (its peak RSS is its own) on the same random unit vectors (seeded,
generated in pieces of 65,536 rows as an encoder would return them):

- ``before``: the search of commit e6e78c3 (``retrieval/search.py`` then), copied here: the full float32
  corpus matrix, every block of 1,024 queries scored against all ``N`` documents at once (a ``[1024, N]``
  matrix), then ``topk``; ``before_faiss``: its ``use_faiss`` path, an ``IndexFlatIP`` over a float32 copy;
- ``after``: the corpus stored in float16 as it is encoded, ``chunked_top_k`` (chunks of 32,768 documents,
  running top-k); ``after_fp32``: the same search over a float32 index, whose ranking must equal
  ``before``'s exactly; ``after_faiss``: float16 index, searched with an ``IndexFlatIP`` filled a chunk at a time.

``python -m bench.scale_search`` (``make bench-scale``) writes ``bench/results/scale_search.json`` with
seconds (build and search), peak RSS, the agreement of every ranking with ``before``'s, and the per-GPU
memory the distributed evaluation would need at MS MARCO scale, before and after (a formula, stated).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.machine import machine_info, peak_rss_mb

RESULTS = Path(__file__).resolve().parent / "results" / "scale_search.json"
VARIANTS = ("before", "before_faiss", "after", "after_fp32", "after_faiss")
PIECE = 65_536


def corpus_pieces(documents: int, dim: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, documents, PIECE):
        rows = min(PIECE, documents - start)
        yield torch.nn.functional.normalize(torch.randn(rows, dim, generator=generator), dim=-1)


def build_index(documents: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    index = torch.empty(documents, dim, dtype=dtype)
    for start, piece in zip(range(0, documents, PIECE), corpus_pieces(documents, dim)):
        index[start : start + len(piece)] = piece
    return index


def search_before(queries: torch.Tensor, documents: torch.Tensor, k: int, chunk: int = 1024):
    """``exact_top_k`` of commit e6e78c3 (torch path): a ``[chunk, N]`` score matrix per query block."""
    all_scores, all_indices = [], []
    corpus = documents.float()
    for start in range(0, queries.shape[0], chunk):
        block = queries[start : start + chunk].float()
        scores = torch.empty(len(block), len(corpus))
        scores[:, :] = block @ corpus.T
        top = scores.topk(min(k, len(corpus)), dim=1)
        all_scores.append(top.values)
        all_indices.append(top.indices)
    return torch.cat(all_scores), torch.cat(all_indices)


def search_before_faiss(queries: torch.Tensor, documents: torch.Tensor, k: int):
    """``exact_top_k(use_faiss=True)`` of commit e6e78c3: an IndexFlatIP holding a float32 copy."""
    import faiss

    index = faiss.IndexFlatIP(documents.shape[1])
    index.add(documents.float().contiguous().numpy())
    scores, indices = index.search(queries.float().contiguous().numpy(), k)
    return torch.from_numpy(scores), torch.from_numpy(indices).long()


def run_variant(variant: str, documents: int, dim: int, queries: int, k: int, out: Path) -> dict[str, Any]:
    from retrieval.search import chunked_top_k

    query_vectors = torch.nn.functional.normalize(
        torch.randn(queries, dim, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    dtype = torch.float32 if variant in ("before", "before_faiss", "after_fp32") else torch.float16
    start = time.perf_counter()
    index = build_index(documents, dim, dtype)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    if variant == "before":
        scores, indices = search_before(query_vectors, index, k)
    elif variant == "before_faiss":
        scores, indices = search_before_faiss(query_vectors, index, k)
    else:
        scores, indices = chunked_top_k(query_vectors, index, k, use_faiss=variant == "after_faiss")
    search_s = time.perf_counter() - start
    torch.save({"scores": scores, "indices": indices}, out)
    return {
        "variant": variant,
        "index_dtype": str(dtype).removeprefix("torch."),
        "build_s": round(build_s, 1),
        "search_s": round(search_s, 1),
        "peak_rss_mb": round(peak_rss_mb(), 0),
        "index_mb": round(index.numel() * index.element_size() / 2**20, 0),
    }


def agreement(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> dict[str, float]:
    same_set = [
        len(set(a.tolist()) & set(b.tolist())) / len(a)
        for a, b in zip(reference["indices"], other["indices"])
    ]
    return {
        "identical_rankings": bool(torch.equal(reference["indices"], other["indices"])),
        "same_position_share": float((reference["indices"] == other["indices"]).float().mean()),
        "top_k_overlap": sum(same_set) / len(same_set),
        "max_score_difference": float((reference["scores"] - other["scores"]).abs().max()),
    }


def projected_gib(documents: int, dim: int, world: int, k: int, queries: int = 1024) -> dict[str, float]:
    """Per-rank evaluation memory (GiB) of the distributed evaluation, from its buffers.

    before: the all-gathered float32 matrix held twice on the GPU (Lightning's gathered list and its
    stacked copy), then a host copy and a ``[1024, N]`` float32 score block on the CPU.
    after: this rank's float16 shard, one float32 chunk of 32,768 documents, its ``[1024, 32768 + k]``
    scores, and the all-gathered ``[world, Q, k]`` scores and indices.
    """
    gib = 2**30
    full = documents * dim * 4
    shard = -(-documents // world) * dim * 2
    chunk = 32_768 * dim * 4 + queries * (32_768 + k) * 4
    return {
        "before_gpu_gib": round(2 * full / gib, 1),
        "before_host_gib": round((full + queries * documents * 4) / gib, 1),
        "after_gpu_gib": round((shard + chunk + world * queries * k * 12) / gib, 2),
    }


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=1024)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--merge", action="store_true", help="keep the other variants' records already in --out"
    )
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # one variant, in a child process
    parser.add_argument("--ranking", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_in_child(variant: str, args: argparse.Namespace, rankings: Path) -> tuple[dict | None, str]:
    """One variant in its own process (its peak RSS is its own): ``(record, "")`` or ``(None, stderr)``."""
    command = [sys.executable, "-m", "bench.scale_search", f"--variant={variant}"]
    command += [f"--ranking={rankings / variant}.pt", f"--documents={args.documents}", f"--dim={args.dim}"]
    command += [f"--queries={args.queries}", f"--k={args.k}", f"--threads={args.threads}"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return None, done.stderr[-1500:]
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "threads": args.threads}, ""


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    torch.set_num_threads(args.threads)
    if args.variant:
        record = run_variant(args.variant, args.documents, args.dim, args.queries, args.k, args.ranking)
        print(json.dumps(record))
        return
    rankings = Path(f"/tmp/lsr-bench-scale-{args.documents}")
    rankings.mkdir(exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.merge and args.out.exists() else {}
    runs, failed = dict(previous.get("runs", {})), dict(previous.get("failed", {}))
    for record in runs.values():  # records written before runs carried their own thread count
        record.setdefault("threads", previous.get("threads"))
    for variant in args.variants.split(","):
        print(f"[scale_search] {variant} ...", flush=True)
        record, error = run_in_child(variant, args, rankings)
        if record is None:
            failed[variant] = error
            print(error, flush=True)
            continue
        runs[variant] = record
        failed.pop(variant, None)
        print(f"[scale_search]   {runs[variant]}", flush=True)
    if "before" in runs:
        reference = torch.load(rankings / "before.pt")
        for variant in runs:
            runs[variant]["vs_before"] = agreement(reference, torch.load(rankings / f"{variant}.pt"))
    payload = {
        "machine": machine_info(),
        **{key: getattr(args, key) for key in ("documents", "dim", "queries", "k")},
        "runs": runs,
        "failed": failed,
        "projected_per_rank_msmarco_8.8M_world_8": {
            str(dim): projected_gib(8_841_823, dim, 8, args.k) for dim in (768, 3072)
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload["runs"], indent=2))


if __name__ == "__main__":
    main()
