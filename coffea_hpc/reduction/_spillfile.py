"""The spill file format: a pickled skeleton, then raw buffers in compressed pieces.

coffea's own format (lz4 around one cloudpickle) must be decompressed and unpickled whole,
which costs two to three partials' worth of memory for a moment. Spilled partials are
internal, so they use a layout that can be read one buffer at a time and added straight
into a running sum: memory is the sum plus one piece, whatever the partial's size (plus one
histogram's storage where its growth category axes list other labels than the sum's).

    magic (8 bytes) | skeleton length (8) | lz4(cloudpickle(skeleton)) | tag (32)
    per buffer, per piece: compressed length (8) | lz4 block of at most 1 MiB | tag (32)

Anyone who can write to a spill directory could otherwise run code as the analyst, so every
part is signed with the run's key (`coffea_hpc._signing`), through a key derived for the
file's name (a partial copied over another's name does not verify): the skeleton's tag is
checked before it is unpickled, each piece's (with its position) before it is decompressed,
so nothing unverified is ever unpickled or added into a sum.

Pieces are small so that each one is added into the sum while it is still in the CPU's cache:
decompressing is most of a merge's time, and with 16 MiB pieces every piece went out to main
memory and back (the merge benchmark is ~20 % faster with 1 MiB pieces).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import struct
import sys
from pathlib import Path
from typing import Any, BinaryIO

import cloudpickle
import lz4.block
import lz4.frame
import numpy as np

from coffea_hpc._signing import TAG_SIZE, RunKey
from coffea_hpc.reduction.buffers import Slot, fold_buffers, skeleton

__all__ = ["SPILL_SUFFIX", "UnverifiedFile", "check_spill_file", "fold_spill_file",
           "read_spill_file", "write_spill_file"]

SPILL_SUFFIX = ".cspill"
_MAGIC = b"CHPCSPL2"
_OLD_MAGIC = b"CHPCSPL1"  # unsigned, before spill files carried tags
_PIECE = 1024**2
_LEN = struct.Struct("<Q")


class UnverifiedFile(ValueError):
    """A file whose tag does not verify with the run's key: it is not read any further."""


def _file_key(key: RunKey, name: str) -> RunKey:
    return key.derive(b"spill:" + name.encode())


def write_spill_file(value: Any, path: Path, key: RunKey, *, name: str | None = None) -> None:
    """Write ``value`` to ``path``, signed for the file name ``name`` (default: its own; a
    file written under a temporary name and renamed says the final one)."""
    signer = _file_key(key, name or path.name)
    skel, buffers = skeleton(value)
    head = lz4.frame.compress(cloudpickle.dumps(skel))
    with open(path, "wb") as out:
        out.write(_MAGIC)
        out.write(_LEN.pack(len(head)))
        out.write(head)
        out.write(signer.tag(b"skeleton", head))
        index = 0
        for buf in buffers:
            raw = memoryview(np.ascontiguousarray(buf)).cast("B")
            for start in range(0, max(len(raw), 1), _PIECE):
                block = lz4.block.compress(raw[start:start + _PIECE], store_size=True)
                out.write(_LEN.pack(len(block)))
                out.write(block)
                out.write(signer.tag(_LEN.pack(index), block))
                index += 1


def check_spill_file(path: Path, key: RunKey) -> None:
    """Raise `UnverifiedFile` unless ``path`` starts as a spill file signed with ``key``
    (its skeleton; the pieces are checked as they are read)."""
    with open(path, "rb") as src:
        _verified_head(src, Path(path), _file_key(key, Path(path).name))


def _verified_head(src: BinaryIO, path: Path, signer: RunKey) -> bytes:
    magic = src.read(len(_MAGIC))
    if magic == _OLD_MAGIC:
        raise UnverifiedFile(f"{path}: an unsigned spill file of an older coffea-hpc")
    if magic != _MAGIC:
        raise UnverifiedFile(f"{path}: not a coffea-hpc spill file")
    head = _read_block(src)
    if not signer.verify(src.read(TAG_SIZE), b"skeleton", head):
        raise UnverifiedFile(f"{path}: not signed by this run's key (planted, damaged, or "
                             "written for another output directory)")
    return head


def fold_spill_file(total: Any, path: Path, key: RunKey) -> Any:
    """Add the partial in ``path`` into ``total`` (None: just read it), buffer by buffer;
    `UnverifiedFile` for any part whose tag does not verify with ``key``."""
    _reuse_piece_memory()
    path = Path(path)
    signer = _file_key(key, path.name)
    with open(path, "rb") as src:
        skel = cloudpickle.loads(lz4.frame.decompress(_verified_head(src, path, signer)))
        count = iter(range(1 << 62))

        def next_block() -> bytes:
            block = _read_block(src)
            if not signer.verify(src.read(TAG_SIZE), _LEN.pack(next(count)), block):
                raise UnverifiedFile(f"{path}: a piece is not signed by this run's key "
                                     "(tampered or damaged)")
            return block

        def read(slot: Slot, target: np.ndarray, add: bool) -> None:
            start = 0
            while True:  # pieces are as the writer cut them; the last may be short or empty
                piece = np.frombuffer(lz4.block.decompress(next_block()),
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


def read_spill_file(path: Path, key: RunKey) -> Any:
    return fold_spill_file(None, path, key)


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
        if size > os.fstat(src.fileno()).st_size:  # a forged length: not worth allocating
            raise UnverifiedFile(f"{src.name}: not a well-formed spill file")
        data = src.read(size)
        if len(data) == size:
            return data
    raise ValueError(f"{src.name}: truncated spill file")

