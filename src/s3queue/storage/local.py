"""The embedded default store: a local directory (``file:///path``).

Real and persistent, and safe for many processes on one machine: every write or
delete of a key happens under an exclusive ``flock`` on one of a fixed set of lock
files (``.s3queue-locks/stripe-00`` to ``stripe-ff``, chosen by the key's hash), goes
to a temporary file that is fsynced, and is renamed into place, so a reader never
sees a partial object and a crash never leaves one. Invariant: each stored file
starts with a header holding a fresh random ETag, written in the same rename as the
data, so the ETag changes on every write even when the bytes are equal (no ABA).

The lock directory never holds more than :data:`STRIPES` files, however many keys
are written. Versions of s3queue before the stripes locked one file per key (named
by the key's SHA-1, 40 hex digits); opening the directory deletes those in bounded
batches. Old and new versions must not run on one directory at the same time: they
lock different files, so they would not exclude each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, TypeVar
from urllib.parse import unquote, urlsplit

from s3queue import sources
from s3queue.errors import (
    ConfigurationError,
    StorageAuthError,
    StorageError,
    StorageUnavailable,
)
from s3queue.storage.base import (
    LIST_PAGE_SIZE,
    ObjectEntry,
    PutMode,
    RequestCounts,
    StoredObject,
    precondition_failure,
    put_kind,
)
from s3queue.storage.keys import check_key
from s3queue.storage.redact import redact_url

T = TypeVar("T")

MAGIC = b"S3Q1 "
ETAG_BYTES = 32  # hex characters of the random ETag
HEADER = len(MAGIC) + ETAG_BYTES + 1  # magic, etag, newline
LOCK_DIR = ".s3queue-locks"
#: Lock files, chosen by the first byte of a key's SHA-1: two keys wait for each other
#: with odds of 1 in 256, and the directory never grows past 256 files.
STRIPES = 256
#: Per-key lock files of earlier versions deleted each time a directory is opened:
#: enough to clear a busy directory in a few opens, few enough to open in milliseconds.
LEGACY_LOCKS_PER_OPEN = 2000
#: Tries to create a key's directory and its temporary file while deletes of other
#: keys may remove that directory again as soon as it is empty.
DIRECTORY_ATTEMPTS = 8
_LEGACY_LOCK = re.compile(r"^[0-9a-f]{40}$")
#: File times come from the kernel's coarse clock, which ticks every few milliseconds.
MTIME_RESOLUTION = 0.01


def _translate(error: OSError, path: Path) -> StorageError:
    if isinstance(error, PermissionError):
        return StorageAuthError(
            f"permission denied on {path}",
            suggestion="run as a user that may read and write the queue directory",
            metadata={"path": str(path)},
        )
    if error.errno == errno.ENOSPC:
        return StorageUnavailable(
            f"no space left on the device of {path}",
            suggestion="free disk space; nothing was written",
            metadata={"path": str(path)},
        )
    return StorageUnavailable(f"{error.strerror or error} on {path}", metadata={"path": str(path)})


def stripe_name(key: str) -> str:
    """The lock file that serializes writes and deletes of ``key``."""
    return f"stripe-{hashlib.sha1(key.encode()).digest()[0] % STRIPES:02x}"


def remove_legacy_locks(locks: Path, limit: int) -> int:
    """Delete up to ``limit`` per-key lock files left by earlier versions; how many.

    Best effort: another process may delete the same file first, and a directory
    this user may not clean up is still usable."""
    removed = 0
    with contextlib.suppress(OSError), os.scandir(locks) as entries:
        for entry in entries:
            if removed >= limit:
                break
            if _LEGACY_LOCK.match(entry.name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


class LocalStorage:
    """Objects as files under ``root``; keys map to relative paths."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self._url = url
        self._counts = RequestCounts()
        self._locks = root / LOCK_DIR

    @classmethod
    def from_url(cls, url: str) -> LocalStorage:
        parts = urlsplit(url)
        raw = unquote(parts.netloc + parts.path)
        if not raw:
            raise ConfigurationError(
                f"invalid storage URL {redact_url(url)!r}: no directory",
                suggestion="use file:///absolute/path or file://relative/path",
            )
        root = Path(raw).expanduser()
        if not root.is_absolute():
            root = Path.cwd() / root
        if root.exists() and not root.is_dir():
            raise ConfigurationError(
                f"invalid storage URL {redact_url(url)!r}: {root} is a file, not a directory",
                suggestion="point file:// at a directory (it is created if missing)",
            )
        try:
            (root / LOCK_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigurationError(
                f"cannot create the queue directory {root}: {error.strerror}",
                suggestion="choose a directory this user may write to",
            ) from error
        if not os.access(root, os.W_OK):
            raise StorageAuthError(
                f"the queue directory {root} is not writable",
                suggestion="fix its permissions or choose another directory",
            )
        remove_legacy_locks(root / LOCK_DIR, LEGACY_LOCKS_PER_OPEN)
        return cls(root, f"file://{root}")

    def __repr__(self) -> str:
        return f"LocalStorage({redact_url(self._url)!r})"

    @property
    def url(self) -> str:
        return self._url

    @property
    def counts(self) -> RequestCounts:
        return self._counts

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def _io(self, path: Path, call: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(call)
        except OSError as error:
            raise _translate(error, path) from error

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        # Every call opens its own descriptor: flock belongs to the open file
        # description, so a descriptor shared between threads would let them all
        # "hold" the lock at once. Callers hold one stripe at a time, never two, so
        # keys that share a stripe wait for each other but cannot deadlock.
        fd = os.open(self._locks / stripe_name(key), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    # --- reads ---------------------------------------------------------------------------

    @staticmethod
    def _read(path: Path) -> StoredObject | None:
        try:
            with path.open("rb") as handle:
                blob = handle.read()
                modified = os.fstat(handle.fileno()).st_mtime_ns / 1e9
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        if not blob.startswith(MAGIC) or len(blob) < HEADER or blob[HEADER - 1 : HEADER] != b"\n":
            # A file put there by hand or by another program: its bytes are the
            # object (the reader then says what it expected there), its version a
            # hash of them, so a conditional write can still replace it.
            digest = hashlib.sha1(blob).hexdigest()[:ETAG_BYTES]
            return StoredObject(blob, f'"raw-{digest}"', modified, MTIME_RESOLUTION)
        etag = blob[len(MAGIC) : len(MAGIC) + ETAG_BYTES].decode("ascii")
        return StoredObject(blob[HEADER:], f'"{etag}"', modified, MTIME_RESOLUTION)

    async def get(self, key: str) -> StoredObject | None:
        path = self._path(key)
        self._counts.add("get")
        return await self._io(path, lambda: self._read(path))

    # --- writes ---------------------------------------------------------------------------

    def _write(self, key: str, data: bytes, mode: PutMode) -> str:
        path = self._path(key)
        with self._locked(key):
            if mode != "overwrite":
                current = self._read(path)
                refused = precondition_failure(mode, key, None if current is None else current.etag)
                if refused is not None:
                    self._counts.add("precondition_failed")
                    raise refused
            etag = sources.token_hex(ETAG_BYTES // 2)
            temp, handle = self._open_temp(path)
            try:
                with handle:
                    handle.write(MAGIC + etag.encode("ascii") + b"\n")
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    temp.unlink()
                raise
            self._fsync_dir(path.parent)
            return f'"{etag}"'

    @staticmethod
    def _open_temp(path: Path) -> tuple[Path, BinaryIO]:
        # A delete of another key, the last in this directory, removes the directory
        # (and its empty parents) without our lock, so it can do so between our mkdir
        # and our open, or inside mkdir (which then sees the directory exist, looks
        # again and finds none); once the temporary file is there, the directory stays.
        temp = path.parent / f".tmp-{path.name}-{sources.token_hex(6)}"
        for _ in range(DIRECTORY_ATTEMPTS - 1):
            with contextlib.suppress(FileNotFoundError, FileExistsError):
                path.parent.mkdir(parents=True, exist_ok=True)
                return temp, temp.open("wb")
        path.parent.mkdir(parents=True, exist_ok=True)
        return temp, temp.open("wb")

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        # The rename is durable only once the directory entry is on disk.
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    async def put(self, key: str, data: bytes, mode: PutMode = "overwrite") -> str:
        path = self._path(key)
        self._counts.add(put_kind(mode))
        return await self._io(path, lambda: self._write(key, data, mode))

    def _delete(self, key: str) -> None:
        path = self._path(key)
        with self._locked(key):
            try:
                path.unlink()
            except FileNotFoundError:
                return
        # Empty directories would slow listings down; losing a race here is harmless.
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    async def delete(self, key: str) -> None:
        path = self._path(key)
        self._counts.add("delete")
        await self._io(path, lambda: self._delete(key))

    async def delete_many(self, keys: Sequence[str]) -> None:
        # One request per key, as on any store without a bulk delete.
        for start in range(0, len(keys), 64):
            await asyncio.gather(*(self.delete(key) for key in keys[start : start + 64]))

    # --- listing ---------------------------------------------------------------------------

    def _list_prefixes(self, prefix: str) -> list[str]:
        directory = self.root / prefix if prefix else self.root
        try:
            names = sorted(os.listdir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return []
        # Dot-names are the backend's own (locks, temporary files); an emptied
        # directory a delete has not removed yet holds no object, so is no prefix.
        # Sorted as S3 sorts them, with the '/': "a-b/" before "a/".
        return sorted(
            f"{prefix}{name}/"
            for name in names
            if not name.startswith(".") and _holds_a_file(directory / name)
        )

    async def list_prefixes(self, prefix: str) -> list[str]:
        found = await self._io(self.root, lambda: self._list_prefixes(prefix))
        self._counts.add("list", max(1, -(-len(found) // LIST_PAGE_SIZE)))
        return found

    def _list(self, prefix: str, start_after: str | None, limit: int | None) -> list[ObjectEntry]:
        # Walk only the deepest directory that contains the whole prefix.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        top = self.root / base if base else self.root
        out: list[ObjectEntry] = []

        def walk(directory: Path, rel: str) -> bool:
            try:
                names = sorted(os.listdir(directory))
            except (FileNotFoundError, NotADirectoryError):
                return True
            # Sort as S3 does: by full key, where a directory "a" sorts as "a/".
            entries = sorted(
                ((f"{rel}{name}/" if (directory / name).is_dir() else f"{rel}{name}"), name)
                for name in names
                if not name.startswith(".")
            )
            for key, name in entries:
                if key.endswith("/"):
                    if not (key.startswith(prefix) or prefix.startswith(key)):
                        continue
                    if (
                        start_after is not None
                        and not start_after.startswith(key)
                        and key < start_after
                    ):
                        continue
                    if not walk(directory / name, key):
                        return False
                    continue
                if not key.startswith(prefix):
                    continue
                if start_after is not None and key <= start_after:
                    continue
                try:
                    stat = (directory / name).stat()
                except FileNotFoundError:
                    continue
                out.append(ObjectEntry(key, max(0, stat.st_size - HEADER), stat.st_mtime_ns / 1e9))
                if limit is not None and len(out) >= limit:
                    return False
            return True

        walk(top, f"{base}/" if base else "")
        return out

    async def list(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[ObjectEntry]:
        entries = await self._io(self.root, lambda: self._list(prefix, start_after, limit))
        self._counts.add("list", max(1, -(-len(entries) // LIST_PAGE_SIZE)))
        return entries

    async def close(self) -> None:
        return None


def _holds_a_file(directory: Path) -> bool:
    """Whether ``directory`` holds an object at any depth (stops at the first)."""
    for _, _, files in os.walk(directory):
        if any(not name.startswith(".") for name in files):
            return True
    return False
