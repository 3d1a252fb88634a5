"""The local-directory backend's own promises, beyond the storage contract."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from s3queue.storage.local import LOCK_DIR, LocalStorage


def open_store(root: Path) -> LocalStorage:
    return LocalStorage.from_url(f"file://{root}")


async def test_a_write_lands_while_deletes_empty_its_directory(tmp_path: Path) -> None:
    """A delete removes its key's directory once empty, holding no lock of the keys
    being written there: a write that created the directory just before still lands."""
    store = open_store(tmp_path)
    gate = asyncio.Semaphore(32)

    async def write_then_delete(n: int) -> None:
        key = f"q/{n % 4}/seg/{n:06d}"
        async with gate:
            await store.put(key, b"x", mode="create")
            await store.delete(key)

    await asyncio.gather(*(write_then_delete(n) for n in range(4000)))
    assert sorted(os.listdir(tmp_path)) == [LOCK_DIR]
