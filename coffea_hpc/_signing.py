"""The run key: what lets coffea-hpc trust a pickle it wrote itself.

Unpickling runs code, so a file that anyone else could have written (a spill directory on
shared storage, a checkpoint in a group-writable output directory, a result that crossed a
service) must never be unpickled unless it provably came from this run. Every such file
carries an HMAC-SHA256 keyed by a secret that only the analyst can read:
``OUT/.coffea-hpc/key`` (mode 600, in a mode-700 folder) for a run with an output directory,
an in-memory key for one without. Workers get the key with their tasks, over the executor's
encrypted channel; it is never written anywhere else, never logged and never shown by
``repr``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from coffea_hpc.errors import UserError

__all__ = ["KEY_NAME", "RUN_DIR_NAME", "RunKey", "key_path"]

RUN_DIR_NAME = ".coffea-hpc"
KEY_NAME = "key"
TAG_SIZE = 32
_KEY_BYTES = 32


def key_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / RUN_DIR_NAME / KEY_NAME


@dataclass(frozen=True)
class RunKey:
    """A per-run secret; equal keys sign and verify the same files."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < 16:
            raise ValueError("a run key has at least 16 bytes")

    @classmethod
    def ephemeral(cls) -> RunKey:
        """A key for a run without an output directory: its files live as long as it does."""
        return cls(secrets.token_bytes(_KEY_BYTES))

    @classmethod
    def of(cls, out_dir: str | Path, *, create: bool = True) -> RunKey | None:
        """The key of the output directory ``out_dir`` (created on first use); None when
        there is none and ``create`` is false."""
        secret = _read_key(key_path(out_dir), create=create)
        return None if secret is None else cls(secret)

    @classmethod
    def from_file(cls, path: str | Path) -> RunKey:
        """The key in ``path`` (``OUT/.coffea-hpc/key``), refused unless it is private."""
        secret = _read_key(Path(path), create=False)
        if secret is None:
            raise UserError(f"key {path} does not exist: give the output directory of the "
                            "run that wrote these files")
        return cls(secret)

    @classmethod
    def from_hex(cls, text: str) -> RunKey:
        return cls(bytes.fromhex(text))

    def hex(self) -> str:
        return self.secret.hex()

    def derive(self, purpose: bytes) -> RunKey:
        """A key for one file or one kind of message: a tag made for one cannot pass as
        another's (a spill file renamed over another, a checkpoint posing as a result)."""
        return RunKey(hmac.new(self.secret, purpose, hashlib.sha256).digest())

    def tag(self, *parts: bytes) -> bytes:
        mac = hmac.new(self.secret, digestmod=hashlib.sha256)
        for part in parts:
            mac.update(len(part).to_bytes(8, "little"))
            mac.update(part)
        return mac.digest()

    def verify(self, tag: bytes, *parts: bytes) -> bool:
        return hmac.compare_digest(tag, self.tag(*parts))

    def seal(self, payload: bytes, purpose: bytes) -> bytes:
        """``payload`` with its tag in front, for `open`."""
        return self.derive(purpose).tag(payload) + payload

    def open(self, sealed: bytes, purpose: bytes) -> bytes | None:
        """The payload `seal` wrapped, or None if the tag does not verify."""
        if not isinstance(sealed, bytes | bytearray) or len(sealed) < TAG_SIZE:
            return None
        tag, payload = bytes(sealed[:TAG_SIZE]), bytes(sealed[TAG_SIZE:])
        return payload if self.derive(purpose).verify(tag, payload) else None


def _read_key(path: Path, *, create: bool) -> bytes | None:
    try:
        return _private_bytes(path)
    except FileNotFoundError:
        if not create:
            return None
    from coffea_hpc.output import private_dir

    folder = private_dir(path.parent)
    tmp = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(_KEY_BYTES))
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):  # another process made one first: use it
            os.link(tmp, path)
    except OSError as err:
        if err.errno is None:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err
    finally:
        tmp.unlink(missing_ok=True)
    return _private_bytes(path)


def _private_bytes(path: Path) -> bytes:
    """The key's bytes, if only its owner, who must be us, can read or change it: a key
    others can read signs nothing, and one they could have written verifies their files."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as src:
        st = os.fstat(src.fileno())
        folder = os.stat(path.parent)
        if hasattr(os, "getuid"):
            for what, info in ((path, st), (path.parent, folder)):
                if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
                    raise UserError(
                        f"{what} must be yours and private (mode {'700' if what != path else '600'}"
                        f"), but it is mode {stat.S_IMODE(info.st_mode):o} owned by uid "
                        f"{info.st_uid}: its files cannot be trusted; rerun into a new output "
                        "directory")
        return src.read()
