"""What an LLM2Vec-Gen embedding "says": greedy text from a query's soft prompt through the frozen decoder.

Python: ``lightning_modules.llm2vec_gen.decoding.decode(module, ["who wrote hamlet"])``. Command line (``make decode CKPT=... TEXT="..."``)::

    python -m experiments.decode --ckpt runs/.../checkpoints/last.ckpt --text "who wrote hamlet"

A run directory works as ``--ckpt`` too (its ``checkpoints/last.ckpt``). Checkpoints of ``debug=tiny`` runs
load their tiny models (the flag is in the checkpoint; ``--tiny`` forces it, as does a run directory whose
``config.yaml`` says ``tiny_models: true``). Mistakes print one ``error:`` line and exit 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from experiments.cli import ArgumentParser, UsageError, go_offline, run_command


def resolve_checkpoint(path: str | Path) -> Path:
    """A ``.ckpt`` file, or a run directory holding ``checkpoints/last.ckpt``."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise UsageError(f"checkpoint '{path}' not found (pass a .ckpt file or a run directory)")
    return path


def run_used_tiny_models(checkpoint: Path) -> bool:
    config = checkpoint.parent.parent / "config.yaml"
    if not config.is_file():
        return False
    return bool((yaml.safe_load(config.read_text()) or {}).get("tiny_models", False))


def load_module(checkpoint: str | Path, tiny: bool | None = None) -> Any:
    """The :class:`LLM2VecGenModule` module of a checkpoint (CPU, eval mode, weights only)."""
    path = resolve_checkpoint(checkpoint)
    go_offline()  # before the imports below load huggingface_hub
    from experiments.checkpoints import load_module as load_checkpoint
    from lightning_modules.llm2vec_gen.module import LLM2VecGenModule

    return load_checkpoint(LLM2VecGenModule, path, tiny=True if tiny or run_used_tiny_models(path) else None)


def decode_texts(argv: Sequence[str]) -> list[str]:
    parser = ArgumentParser(
        prog="python -m experiments.decode",
        description="Decode LLM2Vec-Gen special-token states back to text.",
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint file or run directory")
    parser.add_argument("--text", action="append", required=True, help="a query (repeat for several)")
    parser.add_argument("--kind", choices=("query", "document"), default="query")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--tiny", action="store_true", default=None, help="force tiny models (debug=tiny runs)"
    )
    args = parser.parse_args(list(argv))
    module = load_module(args.ckpt, tiny=args.tiny)
    from lightning_modules.llm2vec_gen.decoding import decode

    outputs = decode(module, args.text, args.kind, args.max_new_tokens)
    for text, out in zip(args.text, outputs):
        print(f"{args.kind}: {text}\ndecoded: {out}\n")
    return outputs


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(decode_texts, None if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
