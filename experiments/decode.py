"""What an LLM2Vec-Gen embedding "says": greedy text from a query's soft prompt through the frozen decoder.

Python: ``lightning_modules.llm2vec_gen.decoding.decode(module, ["who wrote hamlet"])``. Command line (``make decode CKPT=... TEXT="..."``)::

    python -m experiments.decode --ckpt runs/.../checkpoints/last.ckpt --text "who wrote hamlet"

A run directory works as ``--ckpt`` too (its ``checkpoints/last.ckpt``). When the checkpoint sits in a run
directory whose ``config.yaml`` says ``tiny_models: true`` (a ``debug=tiny`` run), tiny models are used.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import yaml

from lightning_modules.llm2vec_gen.decoding import decode
from lightning_modules.llm2vec_gen.module import LLM2VecGenModule


def resolve_checkpoint(path: str | Path) -> Path:
    """A ``.ckpt`` file, or a run directory holding ``checkpoints/last.ckpt``."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' not found (pass a .ckpt file or a run directory)")
    return path


def run_used_tiny_models(checkpoint: Path) -> bool:
    config = checkpoint.parent.parent / "config.yaml"
    if not config.is_file():
        return False
    return bool((yaml.safe_load(config.read_text()) or {}).get("tiny_models", False))


def load_module(checkpoint: str | Path, tiny: bool | None = None) -> LLM2VecGenModule:
    path = resolve_checkpoint(checkpoint)
    if tiny if tiny is not None else run_used_tiny_models(path):
        os.environ["LSR_TINY_MODELS"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return LLM2VecGenModule.load_from_checkpoint(str(path), map_location="cpu")


def main(argv: Sequence[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description="Decode LLM2Vec-Gen special-token states back to text.")
    parser.add_argument("--ckpt", required=True, help="checkpoint file or run directory")
    parser.add_argument("--text", action="append", required=True, help="a query (repeat for several)")
    parser.add_argument("--kind", choices=("query", "document"), default="query")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--tiny", action="store_true", default=None, help="force tiny models (debug=tiny runs)"
    )
    args = parser.parse_args(argv)
    module = load_module(args.ckpt, tiny=args.tiny)
    outputs = decode(module, args.text, args.kind, args.max_new_tokens)
    for text, out in zip(args.text, outputs):
        print(f"{args.kind}: {text}\ndecoded: {out}\n")
    return outputs


if __name__ == "__main__":
    main()
