"""What of a running result changed since a checkpoint last saved it.

Rewriting the whole running sum at every checkpoint costs the whole sum each time, while a
stretch of chunks changes little of it: analysts' outputs are mappings keyed by dataset
(coffea's ``{dataset: {...}}``) or by name and then dataset, and the chunks between two
checkpoints come from a few files of a few datasets. `Changes` notes, as results are folded
into the sum, the entries of the output they touched (two levels of mappings deep), the
trees of the ledger they extended, and the metrics they added, so that a checkpoint can
write those alone (`coffea_hpc.checkpoint`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from coffea_hpc.data.ranges import TreeKey
from coffea_hpc.processing.result import Result

__all__ = ["Changes", "OutputPath"]

OutputPath = tuple[Hashable, ...]
"""Where in the output: ``(key,)`` or ``(key, inner_key)`` of nested mappings."""


class Changes:
    """The parts of a running `Result` touched since `take` was last called.

    ``unknown`` means the sum changed in a way not noted entry by entry (an output that is
    not a mapping, a partial held on storage, a sum started afresh): the next checkpoint
    must write it whole.
    """

    __slots__ = ("metrics", "paths", "trees", "unknown")

    def __init__(self) -> None:
        self.paths: set[OutputPath] = set()
        self.trees: set[TreeKey] = set()
        self.metrics = Result()
        """The metrics added since, summed (they add up; some grow with the files read)."""
        self.unknown = False

    def note(self, result: Result) -> None:
        """``result`` was folded into the running sum."""
        if result.metrics:
            self.metrics.absorb(Result(metrics=result.metrics))
        self.trees.update(tree for tree, _ in result.processed)
        value = result.value
        if value is None or self.unknown:
            return
        if not isinstance(value, Mapping):
            self.unknown = True
            return
        for key, inner in value.items():
            if isinstance(inner, Mapping) and inner:
                self.paths.update((key, name) for name in inner)
            else:
                self.paths.add((key,))

    def lose_track(self) -> None:
        self.unknown = True

    def take(self) -> Changes:
        """What changed so far; from now on, changes are noted afresh."""
        taken = Changes()
        taken.paths, self.paths = self.paths, taken.paths
        taken.trees, self.trees = self.trees, taken.trees
        taken.metrics, self.metrics = self.metrics, taken.metrics
        taken.unknown, self.unknown = self.unknown, False
        return taken
