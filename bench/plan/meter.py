"""Counting the memory of one training step on the ``meta`` device (or on real tensors, the same way).

- :class:`SavedTensors`: what autograd keeps for backward (``torch.autograd.graph.saved_tensors_hooks``),
  each storage counted once and parameters left out (they are counted as parameters).
- :class:`LargestOp`: the largest set of outputs one operation allocates, forward or backward (a
  ``TorchDispatchMode``): the working memory on top of what is kept, e.g. full-vocabulary logits.

Both work on meta tensors, which carry shapes and dtypes but no data, so a 3B-parameter step is counted
in seconds on a CPU.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


def storage_bytes(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().nbytes()


class SavedTensors:
    """Bytes of the distinct storages autograd saves while active, parameters excluded."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        self.excluded = {storage_key(t) for t in exclude}
        self.saved: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = storage_key(tensor)
        if key not in self.excluded:
            self.saved[key] = storage_bytes(tensor)
        return tensor

    @staticmethod
    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    @property
    def bytes(self) -> int:
        return sum(self.saved.values())

    def __enter__(self) -> SavedTensors:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


class LargestOp(TorchDispatchMode):
    """Working memory on top of what autograd keeps, two ways:

    - ``bytes``: the largest total size of the fresh outputs of one operation (views and in-place results
      excluded), forward or backward, e.g. full-vocabulary logits;
    - ``no_grad_peak``: the most bytes alive at once among tensors made in no-grad forward code (a frozen
      LM's teacher or prefix pass: a layer's intermediates coexist), each freed when its tensor object is.
    """

    def __init__(self):
        super().__init__()
        self.bytes = 0
        self.no_grad_live = 0
        self.no_grad_peak = 0

    def _release(self, size: int) -> None:
        self.no_grad_live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view or func._schema.is_mutable:
            return out
        fresh = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        self.bytes = max(self.bytes, sum(t.nbytes for t in fresh))
        if not torch.is_grad_enabled() and torch._C._current_graph_task_id() == -1:
            for tensor in fresh:
                self.no_grad_live += tensor.nbytes
                weakref.finalize(tensor, self._release, tensor.nbytes)
            self.no_grad_peak = max(self.no_grad_peak, self.no_grad_live)
        return out


def parameter_bytes(module: nn.Module, trainable: bool | None = None) -> int:
    """Bytes of the module's distinct parameters (all, or only the trainable / frozen ones)."""
    seen: dict[int, int] = {}
    for parameter in module.parameters():
        if trainable is None or parameter.requires_grad == trainable:
            seen[storage_key(parameter)] = storage_bytes(parameter)
    return sum(seen.values())


def trainable_numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
