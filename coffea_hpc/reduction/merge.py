"""Merging partial results: in memory, streaming from storage, and as tasks near workers.

Every merge here is coffea's accumulate semantics (`merge_values`); they differ only in how
many partials are held in memory at once and where the work runs. `merge_stream` holds the
running sum plus one partial, whatever the number of partials, which is what keeps a driver
alive at the end of a large run. `MergeSpilled` is a work element: the task submits it to
the same backend as the chunks, so partials are merged on the workers, next to the storage
they were spilled to, and only a reference comes back.
"""

from __future__ import annotations

import copy
import logging
import resource
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coffea_hpc._signing import RunKey
from coffea_hpc.processing.result import Result, merge_values
from coffea_hpc.reduction.spill import SpilledRef, SpillSet, fold_spilled, spill

__all__ = ["MergeSpilled", "MergeStats", "merge_serial", "merge_stream", "peak_rss"]

log = logging.getLogger(__name__)


def peak_rss() -> int:
    """This process's peak resident memory so far, in bytes.

    On Linux it is read from ``/proc/self/status`` (VmHWM): ``ru_maxrss`` of a process
    started by ``subprocess`` (vfork, then exec) begins at its *parent's* resident size, so
    a merge launched from a large driver would report the driver's memory as its own.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@dataclass
class MergeStats:
    """What a merge cost: wall time, bytes read from storage, peak memory (RSS)."""

    inputs: int = 0
    wall_time_s: float = 0.0
    bytes_read: int = 0
    peak_rss_bytes: int = 0
    ranks: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "wall_time_s": round(self.wall_time_s, 3),
                "bytes_read": self.bytes_read, "peak_rss_bytes": self.peak_rss_bytes,
                "ranks": self.ranks, **self.extra}


def merge_serial(values: Iterable[Any]) -> Any:
    """Add values in order; the first is copied, never mutated."""
    total: Any = None
    owned = False
    for value in values:
        total = merge_values(total, value, in_place=owned)
        owned = total is not value
    return total


def merge_stream(
    inputs: Iterable[SpilledRef | str | Path],
    key: RunKey | None,
    *,
    initial: Any = None,
    stats: MergeStats | None = None,
    trust_coffea_files: bool = False,
) -> Any:
    """Merge partials from storage one at a time; spill files must verify with ``key``,
    files in coffea's format are merged only with ``trust_coffea_files``.

    Memory is the running sum plus one buffer for spill files, plus one partial for files in
    coffea's format. ``initial`` (values already in memory, usually small: whatever was not
    worth spilling) is copied, never modified: it may still be referenced by a processor.
    """
    started = time.perf_counter()
    total = copy.deepcopy(initial)
    count = 0
    read = 0
    for item in inputs:
        path = item.path if isinstance(item, SpilledRef) else str(item)
        total = fold_spilled(total, path, key, trust_coffea_files=trust_coffea_files)
        read += Path(path).stat().st_size
        count += 1
    if stats is not None:
        stats.inputs += count
        stats.bytes_read += read
        stats.wall_time_s += time.perf_counter() - started
        stats.peak_rss_bytes = max(stats.peak_rss_bytes, peak_rss())
    return total


def resolve(value: Any, key: RunKey, *, stats: MergeStats | None = None,
            delete: bool = False) -> Any:
    """Turn a possibly deferred value (`SpilledRef`, `SpillSet`) into the merged output."""
    if isinstance(value, SpilledRef):
        value = SpillSet((value,))
    if not isinstance(value, SpillSet):
        return value
    total = merge_stream(value.refs, key, initial=value.value, stats=stats)
    if delete:
        for ref in value.refs:
            Path(ref.path).unlink(missing_ok=True)
    return total


@dataclass(frozen=True)
class MergeSpilled:
    """A work element: merge some spilled partials into one, written back to storage.

    Its inputs are deleted only after the merged partial is safely written, so a merge that
    dies loses nothing: the task puts the inputs back and merges them later.
    """

    refs: tuple[SpilledRef, ...]
    spill_dir: str
    key: RunKey = field(repr=False)
    delete_inputs: bool = True

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(r.path for r in self.refs)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(f"merge of {Path(r.path).name}" for r in self.refs)

    @property
    def weight(self) -> int:
        return len(self.refs)

    def __call__(self) -> Result:
        stats = MergeStats()
        merged = merge_stream(self.refs, self.key, stats=stats)
        ref = spill(merged, self.spill_dir, self.key)
        if self.delete_inputs:
            for old in self.refs:
                Path(old.path).unlink(missing_ok=True)
        return Result(value=ref, metrics={"merge_time": stats.wall_time_s,
                                          "merge_bytes_read": stats.bytes_read,
                                          "merges": 1})
