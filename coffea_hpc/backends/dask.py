"""Dask distributed: an existing scheduler by address, or a local cluster on loopback."""

from __future__ import annotations

import logging
import os
from typing import Any

from coffea_hpc.backends._base import PoolBackend, refuse_an_unguarded_script, run_element
from coffea_hpc.backends.protocol import WorkElement
from coffea_hpc.extras import require

__all__ = ["DaskBackend"]

log = logging.getLogger(__name__)


class DaskBackend(PoolBackend):
    name = "dask"

    def __init__(self, address: str | None = None, *, workers: int | None = None) -> None:
        """Connect to the scheduler at ``address``, or start ``workers`` local processes."""
        super().__init__()
        self._address = address
        self._n = workers or os.cpu_count() or 1
        self._client: Any = None
        self._cluster: Any = None

    @property
    def workers(self) -> int:
        if self._client is not None and self._address is not None:
            return max(sum(self._client.nthreads().values()), 1)
        return self._n

    def submit(self, element: WorkElement) -> Any:
        return self._client.submit(run_element, element, pure=False)

    def connected_workers(self) -> int | None:
        """Workers known to the scheduler (an adaptive or batch-queue cluster may have none
        yet)."""
        client = self._client
        return None if client is None else len(client.nthreads())

    @property
    def on_this_machine(self) -> bool:
        return self._address is None

    def _start(self) -> None:
        distributed = require("distributed", "dask backend", extra="dask")
        if self._address is not None:
            self._client = distributed.Client(self._address)
            return
        refuse_an_unguarded_script("dask")  # its worker processes import the script too
        saved = dict(os.environ)
        try:
            self._cluster = distributed.LocalCluster(
                n_workers=self._n,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",  # loopback, any free port: never clashes
                silence_logs=logging.ERROR,
            )
        finally:
            # distributed sets OMP_NUM_THREADS=1 (and friends) for its workers in *this*
            # process's environment and leaves them; every later subprocess would inherit them
            os.environ.clear()
            os.environ.update(saved)
        self._client = distributed.Client(self._cluster)

    def _close(self) -> None:
        try:
            if self._client is not None:
                self._client.close()
        finally:
            self._client = None
            if self._cluster is not None:
                self._cluster.close()
                self._cluster = None
