"""Reduction: how partial results come together.

Three modes, one outcome (the same output, up to floating-point summation order):

- ``driver``: results are added on the driver as they arrive; partials bigger than the
  spill threshold are written to storage by the worker and merged at the end, streaming.
- ``tree``: every partial is spilled; merge tasks on the workers combine them ``fan_in`` at a
  time while the run goes on; the driver handles only references.
- ``mpi``: every partial is spilled; at the end an MPI job merges them in a binomial tree.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from coffea_hpc._signing import RunKey
from coffea_hpc.errors import MergeError
from coffea_hpc.reduction._spillfile import SPILL_SUFFIX
from coffea_hpc.reduction.merge import MergeStats, merge_serial, merge_stream, resolve
from coffea_hpc.reduction.spill import (
    SpilledRef,
    SpillPolicy,
    SpillSet,
    load_spilled,
    spill,
)
from coffea_hpc.reduction.tree import TreeReducer

if TYPE_CHECKING:
    from coffea_hpc.reduction.mpi_job import MpiMergeJob

__all__ = [
    "MergeStats",
    "Reduction",
    "SpillPolicy",
    "SpillSet",
    "SpilledRef",
    "load_spilled",
    "merge_serial",
    "merge_stream",
    "spill",
]

log = logging.getLogger(__name__)

Mode = Literal["driver", "tree", "mpi"]
MODES: tuple[str, ...] = ("driver", "tree", "mpi")

DEFAULT_SPILL_BYTES = 256 * 1024**2


@dataclass(frozen=True, kw_only=True)
class Reduction:
    """How a run reduces; plain data, built from command-line flags or by hand."""

    mode: Mode = "driver"
    fan_in: int = 8
    spill_dir: str | None = None
    spill_bytes: int = DEFAULT_SPILL_BYTES
    mpi_ranks: int = 2
    mpi_launcher: str = "mpiexec"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            from coffea_hpc.errors import UserError

            raise UserError(f"unknown reduction {self.mode!r}: choose one of {', '.join(MODES)}")

    def spill_policy(self, output_dir: Path | None, *, remote: str | None = None,
                     key: RunKey | None = None) -> SpillPolicy:
        """Where this run spills: ``OUTPUT/spill`` by default; under ``--spill-dir`` (or a
        backend's remote storage), a folder named after the output directory, so a resumed
        run finds its partials and runs sharing a spill area never mix. Spill files are
        signed with ``key``: the output directory's (a resumed run verifies what it left),
        or a key of this run alone."""
        root = self.spill_dir or remote
        if root is not None:
            tag = hashlib.sha1(str(output_dir.resolve() if output_dir else uuid.uuid4())
                               .encode()).hexdigest()[:12]
            directory = f"{root.rstrip('/')}/coffea-hpc-{tag}"
        elif output_dir is not None:
            directory = str(output_dir / "spill")
        else:
            directory = str(Path(tempfile.gettempdir()) / f"coffea-hpc-spill-{uuid.uuid4().hex}")
        threshold = self.spill_bytes if self.mode == "driver" else 0
        if key is None:
            key = RunKey.of(output_dir) if output_dir is not None else RunKey.ephemeral()
        assert key is not None
        return SpillPolicy(directory, threshold, key)

    def reducer(self, policy: SpillPolicy) -> TreeReducer | None:
        if self.mode != "tree":
            return None
        return TreeReducer(policy.directory, policy.key, self.fan_in)

    def merge_job(self) -> contextlib.AbstractContextManager[MpiMergeJob | None]:
        """For ``mpi``, the MPI merge job, started now (a run starts it as processing starts,
        so the ranks are up when the last partial is in); otherwise nothing."""
        if self.mode != "mpi":
            return contextlib.nullcontext()
        from coffea_hpc.reduction.mpi_job import MpiMergeJob

        return MpiMergeJob(self.mpi_ranks, self.mpi_launcher)

    def finish(self, value: Any, policy: SpillPolicy,
               job: MpiMergeJob | None = None) -> tuple[Any, MergeStats]:
        """Resolve what the run left (references and in-memory partials) into the output;
        ``job`` is the run's `merge_job` (without one, ``mpi`` starts its ranks now)."""
        stats = MergeStats()
        if isinstance(value, SpilledRef):
            value = SpillSet((value,))
        if not isinstance(value, SpillSet):
            return value, stats
        if self.mode == "mpi" and len(value) > 1:
            try:
                return self._mpi_merge(value, policy, job)
            except MergeError as err:  # the partials are all still there: merge them here
                log.warning("%s; merging on the driver instead", err)
                stats.extra["mpi_error"] = str(err)
        return resolve(value, policy.key, stats=stats), stats

    def _mpi_merge(self, value: SpillSet, policy: SpillPolicy,
                   job: MpiMergeJob | None) -> tuple[Any, MergeStats]:
        from coffea_hpc.reduction.mpi_job import MpiMergeJob

        refs = list(value.refs)
        if value.value is not None:
            refs.append(spill(value.value, policy.directory, policy.key))
        merged = Path(policy.directory) / f"mpi-merged{SPILL_SUFFIX}"
        with contextlib.ExitStack() as stack:
            if job is None:
                job = stack.enter_context(MpiMergeJob(self.mpi_ranks, self.mpi_launcher))
            stats = job.merge([r.path for r in refs], merged, key=policy.key)
        total = load_spilled(merged, policy.key)
        merged.unlink(missing_ok=True)
        return total, stats
