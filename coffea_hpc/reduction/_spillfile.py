"""The spill file format: a pickled skeleton, then raw buffers in compressed pieces.

coffea's own format (lz4 around one cloudpickle) must be decompressed and unpickled whole,
which costs two to three partials' worth of memory for a moment. Spilled partials are
internal, so they use a layout that can be read one buffer at a time and added straight
into a running sum: memory is the sum plus one piece, whatever the partial's size (plus one
histogram's storage where its growth category axes list other labels than the sum's).

    magic (8 bytes) | skeleton length (8) | lz4(cloudpickle(skeleton))
    per buffer, per piece: compressed length (8) | lz4 block of at most 1 MiB of raw bytes

Pieces are small so that each one is added into the sum while it is still in the CPU's cache:
decompressing is most of a merge's time, and with 16 MiB pieces every piece went out to main
memory and back (the merge benchmark is ~20 % faster with 1 MiB pieces).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import struct
import sys
from pathlib import Path
from typing import Any, BinaryIO

import cloudpickle
import lz4.block
import lz4.frame
import numpy as np

from coffea_hpc.reduction.buffers import Slot, fold_buffers, skeleton

__all__ = ["SPILL_SUFFIX", "fold_spill_file", "read_spill_file", "write_spill_file"]

SPILL_SUFFIX = ".cspill"
_MAGIC = b"CHPCSPL1"
_PIECE = 1024**2
_LEN = struct.Struct("<Q")


def write_spill_file(value: Any, path: Path) -> None:
    skel, buffers = skeleton(value)
    head = lz4.frame.compress(cloudpickle.dumps(skel))
    with open(path, "wb") as out:
        out.write(_MAGIC)
        out.write(_LEN.pack(len(head)))
        out.write(head)
        for buf in buffers:
            raw = memoryview(np.ascontiguousarray(buf)).cast("B")
            for start in range(0, max(len(raw), 1), _PIECE):
                block = lz4.block.compress(raw[start:start + _PIECE], store_size=True)
                out.write(_LEN.pack(len(block)))
                out.write(block)


def fold_spill_file(total: Any, path: Path) -> Any:
    """Add the partial in ``path`` into ``total`` (None: just read it), buffer by buffer."""
    _reuse_piece_memory()
    with open(path, "rb") as src:
        if src.read(len(_MAGIC)) != _MAGIC:
            raise ValueError(f"{path} is not a coffea-hpc spill file")
        skel = cloudpickle.loads(lz4.frame.decompress(_read_block(src)))

        def read(slot: Slot, target: np.ndarray, add: bool) -> None:
            start = 0
            while True:  # pieces are as the writer cut them; the last may be short or empty
                piece = np.frombuffer(lz4.block.decompress(_read_block(src)),
                                      dtype=target.dtype)
                segment = target[start:start + piece.size]
                if add:
                    segment += piece
                else:
                    segment[...] = piece
                start += piece.size
                if not piece.size and start < target.size:
                    raise ValueError(f"{path}: truncated spill file (a buffer ends early)")
                if start >= target.size:
                    return

        return fold_buffers(total, skel, read)


def read_spill_file(path: Path) -> Any:
    return fold_spill_file(None, path)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@functools.cache
def _reuse_piece_memory() -> None:
    """Let glibc recycle the memory of decompressed pieces instead of mapping it afresh.

    Every piece is decompressed into a new 1 MiB object. glibc serves allocations that
    large with a fresh ``mmap`` (its adaptive threshold never admits a request equal to the
    largest freed one) and returns the heap's top to the system once it exceeds the trim
    threshold, so every byte read used to be page-faulted in first: half the time of a
    merge, measured in ``benchmarks/merge.py``. Raising both thresholds keeps a few pieces'
    worth of freed memory for reuse; peak memory is unchanged. Done once per process, on glibc only.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 2 * _PIECE)
        libc.mallopt(_M_TRIM_THRESHOLD, 8 * _PIECE)
    except (OSError, AttributeError):  # not glibc (musl): nothing to tune
        pass


def _read_block(src: BinaryIO) -> bytes:
    head = src.read(_LEN.size)
    if len(head) == _LEN.size:
        (size,) = _LEN.unpack(head)
        data = src.read(size)
        if len(data) == size:
            return data
    raise ValueError(f"{src.name}: truncated spill file")

