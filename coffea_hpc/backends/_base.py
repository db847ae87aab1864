"""The shared skeleton of backends that run elements by submitting them to a pool."""

from __future__ import annotations

import abc
import ast
import logging
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import ClassVar

from coffea_hpc.backends._task import FutureLike, FutureTask, Reducer
from coffea_hpc.backends.protocol import Computable, ErrorPolicy, WorkElement
from coffea_hpc.errors import BackendError, UserError

__all__ = ["PoolBackend", "refuse_an_unguarded_script", "run_element", "warm_up"]

log = logging.getLogger(__name__)


def run_element(element: WorkElement) -> object:
    """Module-level entry point, so pools pickle a reference, not a closure."""
    return element()


def warm_up() -> None:
    """Run once by each new worker of a local pool, before its first chunk: it imports
    what chunks need (coffea, awkward, uproot, numba: seconds) while the driver is still
    preprocessing, and freezes those start-up objects out of the garbage collector's
    full collections."""
    from coffea_hpc.processing.worker import freeze_startup_objects

    freeze_startup_objects()


def refuse_an_unguarded_script(backend: str) -> None:
    """A script that starts a run at its top level, outside ``if __name__ == "__main__":``,
    is run again by every worker process (they import the script to find what it
    defines): each fails at start and the pool breaks, which would read as workers killed
    for memory. Said in one line instead, naming the line."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path:
        return  # a notebook, python -c, an interactive session: nothing is re-imported
    frame = sys._getframe()
    top = None
    while frame is not None:  # the script's own module-level frame, outermost
        if frame.f_globals is vars(main) and frame.f_code.co_name == "<module>":
            top = frame
        frame = frame.f_back
    if top is None:
        return
    try:
        tree = ast.parse(Path(path).read_text(), path)
    except (OSError, SyntaxError, ValueError):
        return
    line = top.f_lineno
    for node in tree.body:
        if isinstance(node, ast.If) and _is_main_guard(node.test) \
                and node.lineno <= line <= (node.end_lineno or node.lineno):
            return
    raise UserError(f"{path}:{line} starts a {backend} run outside an 'if __name__ == "
                    "\"__main__\":' block: each worker process imports the script again and "
                    "would run it again; put the code that runs the analysis under that guard")


def _is_main_guard(test: ast.expr) -> bool:
    return any(isinstance(node, ast.Compare)
               and {_name_or_text(node.left), *map(_name_or_text, node.comparators)}
               == {"__name__", "'__main__'"}
               for node in ast.walk(test))


def _name_or_text(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return repr(node.value)
    return None


class PoolBackend(abc.ABC):
    """A backend is started by ``with`` and stopped at the end of the block, error or not."""

    name: ClassVar[str]

    def __init__(self) -> None:
        self._started = False
        self.start_seconds: float | None = None
        """How long the start of the backend as it runs now took (None when it is not
        running): the report's start-up stage, also for a backend its caller started
        before the run."""

    def __enter__(self) -> PoolBackend:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        if not self._started:
            began = time.perf_counter()
            self._start()
            self._started = True
            self.start_seconds = time.perf_counter() - began

    def close(self) -> None:
        if self._started:
            self._started = False
            self.start_seconds = None  # a backend started again is not charged this start
            self._close()

    def compute(
        self, work: Computable, policy: ErrorPolicy | None = None, *,
        reducer: Reducer | None = None,
    ) -> FutureTask:
        if not self._started:
            raise BackendError(f"the {self.name} backend is not started: use it in a 'with' block")
        return FutureTask(work, self.submit, policy, reducer=reducer,
                          submit_merge=self.submit_merge, window=self.window,
                          lost_on=self.lost_on)

    @property
    def on_this_machine(self) -> bool:
        """Whether the workers run on this machine (and read what the driver can read): a
        small fileset is then preprocessed by the driver itself while they start."""
        return False

    @property
    def lost_on(self) -> tuple[type[BaseException], ...]:
        """Exceptions meaning an element's workers ended with their block (walltime,
        preemption): its chunks run again without spending retries. Pools of this
        machine's processes have no blocks."""
        return ()

    @property
    def window(self) -> int | None:
        """Elements in flight at once: two per worker keeps every worker busy while the
        driver folds a result in, without queueing the whole fileset up front."""
        return 2 * self.workers + 2

    def connected_workers(self) -> int | None:
        """Workers ready to take elements now, or None where the backend cannot tell.

        Pools of this machine's own processes are ready when `start` returns; pools that
        come from a batch queue are not, and a run that waits for them should say so.
        """
        return None

    def submit_merge(self, element: WorkElement) -> FutureLike:
        """Where merge tasks run; the same workers as chunks unless a backend says otherwise."""
        return self.submit(element)

    @property
    @abc.abstractmethod
    def workers(self) -> int: ...

    @abc.abstractmethod
    def submit(self, element: WorkElement) -> FutureLike: ...

    @abc.abstractmethod
    def _start(self) -> None: ...

    @abc.abstractmethod
    def _close(self) -> None: ...
