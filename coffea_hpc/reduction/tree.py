"""Merging near the workers: a tree of merge tasks over spilled partials.

While chunks are still being processed, every ``fan_in`` spilled partials that reach the
driver become one `MergeSpilled` task on the same backend; its output (another spilled
partial) joins the pool and is merged again, so the driver only ever handles references and
the last merge starts from a handful of inputs instead of one per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from coffea_hpc._signing import RunKey
from coffea_hpc.processing.result import Result
from coffea_hpc.reduction.merge import MergeSpilled
from coffea_hpc.reduction.spill import SpillSet

__all__ = ["TreeReducer"]


@dataclass
class TreeReducer:
    """A `coffea_hpc.backends._task.Reducer` merging ``fan_in`` partials per task."""

    spill_dir: str
    key: RunKey = field(repr=False)
    fan_in: int = 8

    def __post_init__(self) -> None:
        if self.fan_in < 2:
            raise ValueError(f"fan_in must be at least 2, got {self.fan_in}")

    def merges(self, acc: Result) -> list[MergeSpilled]:
        pool = acc.value
        if not isinstance(pool, SpillSet) or len(pool) < self.fan_in:
            return []
        n_full = len(pool) // self.fan_in * self.fan_in
        groups = [pool.refs[i:i + self.fan_in] for i in range(0, n_full, self.fan_in)]
        acc.value = SpillSet(pool.refs[n_full:], pool.value)
        return [MergeSpilled(group, self.spill_dir, self.key, delete_inputs=False)
                for group in groups]

    def inputs(self, element: MergeSpilled) -> SpillSet:  # type: ignore[override]
        return SpillSet(element.refs)
