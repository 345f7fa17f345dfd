"""Homogeneous in-batch negatives: every GLOBAL batch (all ranks together) comes from one task.

LLM-Embedder trains on several task families at once; mixing them in one batch would make the in-batch
negatives trivially easy (a tool description is no competitor for a Wikipedia paragraph). This batch
sampler draws, for each step, one task with probability proportional to its weight, using a generator
seeded identically on every rank, then takes ``batch_size × num_replicas`` examples of that task and gives
rank ``r`` its own slice. So the ranks agree on the task without communicating.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from torch.utils.data import Sampler

BatchKey = tuple[str, int, int]  # (task, example index, epoch)


class HomogeneousTaskBatchSampler(Sampler[list[BatchKey]]):
    """Yields this rank's share of single-task global batches, as ``(task, index, epoch)`` keys.

    Args:
        task_sizes: number of examples per task.
        batch_size: examples per rank per step.
        weights: sampling weight per task (default: proportional to size; a task missing here gets 0).
        num_replicas / rank: the distributed world (Lightning passes ``trainer.world_size``/``global_rank``).
        seed: base seed; ``set_epoch`` changes the order per epoch (deterministic for resumption).
        steps_per_epoch: steps in one epoch (default: total examples // global batch).

    Within a task, examples are drawn without replacement from a seeded permutation, reshuffled when used up.
    """

    def __init__(
        self,
        task_sizes: dict[str, int],
        batch_size: int,
        weights: dict[str, float] | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        steps_per_epoch: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        weights = dict(weights) if weights is not None else {t: float(n) for t, n in task_sizes.items()}
        unknown = set(weights) - set(task_sizes)
        if unknown:
            raise ValueError(f"weights name unknown task(s) {sorted(unknown)} (tasks: {sorted(task_sizes)})")
        self.global_batch = batch_size * num_replicas
        self.tasks = sorted(t for t in task_sizes if weights.get(t, 0.0) > 0)
        if not self.tasks:
            raise ValueError("no task has a positive sampling weight")
        for task in self.tasks:
            if task_sizes[task] < self.global_batch:
                raise ValueError(
                    f"task '{task}' has {task_sizes[task]} examples, fewer than one global batch "
                    f"({batch_size} per rank × {num_replicas} ranks); lower its weight to 0 or the batch size"
                )
            if weights[task] < 0:
                raise ValueError(f"task '{task}' has a negative weight {weights[task]}")
        self.task_sizes, self.weights = dict(task_sizes), weights
        self.batch_size, self.num_replicas, self.rank, self.seed = batch_size, num_replicas, rank, seed
        total = sum(task_sizes[t] for t in self.tasks)
        self.steps_per_epoch = steps_per_epoch or max(total // self.global_batch, 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def sampler(self) -> HomogeneousTaskBatchSampler:
        """Itself. Lightning's ``_set_sampler_epoch`` calls ``set_epoch`` on ``loader.sampler`` and on
        ``loader.batch_sampler.sampler`` only; without this attribute every epoch would replay epoch 0's
        order, and the examples a large task does not reach in one epoch would never be drawn."""
        return self

    def _permutation(self, task: str, round_: int) -> list[int]:
        order = list(range(self.task_sizes[task]))
        random.Random(f"{self.seed}-{self.epoch}-{task}-{round_}").shuffle(order)
        return order

    def global_batches(self) -> Iterator[tuple[str, list[int]]]:
        """``(task, indices)`` of each global batch of this epoch (the same on every rank)."""
        chooser = random.Random(f"{self.seed}-{self.epoch}-tasks")
        cursor = {t: 0 for t in self.tasks}
        rounds = {t: 0 for t in self.tasks}
        orders = {t: self._permutation(t, 0) for t in self.tasks}
        weights = [self.weights[t] for t in self.tasks]
        for _ in range(self.steps_per_epoch):
            task = chooser.choices(self.tasks, weights)[0]
            if cursor[task] + self.global_batch > len(orders[task]):
                rounds[task] += 1
                orders[task], cursor[task] = self._permutation(task, rounds[task]), 0
            yield task, orders[task][cursor[task] : cursor[task] + self.global_batch]
            cursor[task] += self.global_batch

    def __iter__(self) -> Iterator[list[BatchKey]]:
        start, stop = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        for task, indices in self.global_batches():
            yield [(task, i, self.epoch) for i in indices[start:stop]]

    def __len__(self) -> int:
        return self.steps_per_epoch
