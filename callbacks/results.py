"""What a callback contributes to a finished run's ``results.json`` (``experiments/run_results.py``),
stated as protocols instead of probing callbacks for attributes."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import lightning as L


@runtime_checkable
class ContributesResults(Protocol):
    """A callback with measurements or outputs that belong in ``results.json`` (merged into it)."""

    def results_summary(self) -> dict[str, Any]: ...


@runtime_checkable
class NeedsResults(Protocol):
    """A callback whose output describes the finished run (the export's model card): called once, with the
    complete results, before ``results.json`` is written."""

    def on_results(
        self, trainer: L.Trainer, pl_module: L.LightningModule, results: dict[str, Any]
    ) -> None: ...
