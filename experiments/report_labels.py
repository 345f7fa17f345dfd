"""Row labels of ``make report``: runs of one experiment are told apart by where their configs differ."""

from __future__ import annotations

from typing import Any

from experiments.report_rows import Row
from experiments.run_dir import flatten as flatten_config

# Config keys that change where or how fast a run goes, not what it computes: never part of a row label.
NON_SEMANTIC_KEYS = ("output_root", "threads", "trainer.enable_progress_bar", "logger")


def flatten(tree: Any) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (the run dir's flattening, without empty sub-trees)."""
    return {key: value for key, value in flatten_config(tree).items() if value != {}}


def differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    """Dotted keys whose values differ between the configs (a key missing from one counts as differing)."""
    keys = sorted(set().union(*configs)) if configs else []
    return [
        k
        for k in keys
        if not any(k == n or k.startswith(n + ".") for n in NON_SEMANTIC_KEYS)
        and len({repr(c.get(k, "<unset>")) for c in configs}) > 1
    ]


UNSET = object()


def config_difference(config: dict[str, Any], group: list[dict[str, Any]], keys: list[str]) -> list[str]:
    """Where ``config`` departs from the value most of its ``group`` has on ``keys`` (every value is shown
    when no value has a strict majority): ``key=value``, or
    ``~prefix`` when a whole sub-tree the others have is absent here (e.g. ``~data.tasks.tool``)."""
    parts: list[str] = []
    for key in keys:
        values = [repr(c.get(key, UNSET)) for c in group]
        mode = max(values, key=values.count)
        if repr(config.get(key, UNSET)) == mode and 2 * values.count(mode) > len(values):
            continue  # this run has the group's usual value (a strict majority has it)
        if key in config:
            parts.append(f"{key}={config[key]}")
            continue
        prefix = key
        while "." in prefix and not any(k.startswith(prefix.rsplit(".", 1)[0] + ".") for k in config):
            prefix = prefix.rsplit(".", 1)[0]
        parts += [f"~{prefix}"] if f"~{prefix}" not in parts else []
    return parts


def disambiguate(runs: list[Row]) -> None:
    """Runs of one experiment with different overrides get what differs in their labels (e.g.
    ``model.teacher.reward=rank_aware``, ``~data.tasks.tool``); the step count when that is not enough."""
    groups: dict[str, list[Row]] = {}
    for row in runs:
        row.name = row.name or row.label
        row.label = row.name
        groups.setdefault(row.name, []).append(row)
    for label, group in groups.items():
        if len(group) < 2:
            continue
        keys = differing_keys([r.config for r in group])
        for row in group:
            parts = config_difference(row.config, [r.config for r in group], keys)
            row.label = f"{label} ({', '.join(parts)})" if parts else label
        labels = [r.label for r in group]
        for row in group:  # still alike (same config, e.g. a shorter run of it): the step count tells
            if labels.count(row.label) > 1:
                row.label = (
                    f"{row.label[:-1]}, {row.steps} steps)"
                    if row.label != label
                    else f"{label} ({row.steps} steps)"
                )
