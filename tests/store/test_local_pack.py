"""LocalTier batches: one pack file per `set_many`, one hard link per key, and what that keeps
(reads, overwrites, deletes, sizes, residency, corrupt files, other processes, old layouts)."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from tests.store.test_local import FakeClock, local, temp_files
from tests.store.tier_contract import contract_entry
from tiercache_mw.config import TierConfig
from tiercache_mw.store import pack
from tiercache_mw.store.entry import Entry, Residency
from tiercache_mw.store.local import READ_CHUNK, STALE_TEMP_SECONDS, SUFFIX, LocalTier

KEEP = Residency(None, None, 3600.0)


def nested_dirs(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_dir() and p.parent != root]


def batch(prefix: str, n: int, value: bytes = b"v" * 100) -> list[Entry]:
    return [contract_entry(f"{prefix}{i}", value + b"%d" % i, residency=KEEP) for i in range(n)]


async def test_a_batch_is_one_file_linked_under_every_key(tmp_path: Path) -> None:
    tier = local(tmp_path)
    entries = batch("k", 20)
    assert await tier.set_many(entries) == [None] * 20
    inodes = {os.stat(tier.path_for(e.key)).st_ino for e in entries}
    assert len(inodes) == 1
    assert os.stat(tier.path_for("k0")).st_nlink == 20
    assert temp_files(tmp_path) == []
    for entry in entries:
        got = await tier.get(entry.key)
        assert got is not None
        assert got.value == entry.value


def disk_bytes(root: Path) -> int:
    """What the tier's files hold on disk: each inode once, however many keys link to it."""
    stats = {(st.st_dev, st.st_ino): st.st_size for st in map(os.stat, root.rglob(f"*{SUFFIX}"))}
    return sum(stats.values())


async def test_a_pack_counts_its_bytes_once_until_its_last_key_goes(tmp_path: Path) -> None:
    tier = local(tmp_path)
    await tier.set_many(batch("k", 10, b"x" * 1000))
    pack_size = os.stat(tier.path_for("k0")).st_size
    stats = await tier.stats()
    assert (stats.entries, stats.size_bytes) == (10, pack_size)
    rescanned = await local(tmp_path).stats()  # another process counts it the same way
    assert (rescanned.entries, rescanned.size_bytes) == (10, pack_size)
    for i in range(9):
        await tier.delete(f"k{i}")
    # One key left holds the whole pack on disk, and is counted so.
    assert (await tier.stats()).size_bytes == disk_bytes(tmp_path) == pack_size
    assert (await local(tmp_path).stats()).size_bytes == pack_size
    await tier.delete("k9")
    assert (await tier.stats()).size_bytes == disk_bytes(tmp_path) == 0


async def test_the_size_cap_holds_for_bytes_on_disk_when_packs_are_partly_deleted(
    tmp_path: Path,
) -> None:
    cap = 60_000
    tier = LocalTier("dry", TierConfig("local", None, cap), tmp_path)
    for round_ in range(12):
        entries = batch(f"r{round_}-", 16, b"x" * 1000)
        await tier.set_many(entries)
        for entry in entries[::2]:  # half of each pack deleted: the pack stays on disk
            await tier.delete(entry.key)
        assert disk_bytes(tmp_path) <= cap, round_
        assert (await tier.stats()).size_bytes == disk_bytes(tmp_path)


async def test_a_key_already_on_disk_is_replaced_and_the_last_of_a_batch_wins(
    tmp_path: Path,
) -> None:
    tier = local(tmp_path)
    await tier.set(contract_entry("k", b"old", residency=KEEP))
    await tier.set_many([*batch("other", 3), contract_entry("k", b"new", residency=KEEP)])
    got = await tier.get("k")
    assert got is not None
    assert got.value == b"new"
    twice = [contract_entry("d", b"first", residency=KEEP), contract_entry("d", b"last")]
    assert await tier.set_many([*twice, *batch("more", 2)]) == [None] * 4
    got = await tier.get("d")
    assert got is not None
    assert got.value == b"last"
    assert temp_files(tmp_path) == []


async def test_deleting_one_key_of_a_pack_leaves_the_others(tmp_path: Path) -> None:
    tier = local(tmp_path)
    await tier.set_many(batch("k", 3))
    assert await tier.delete("k1") is True
    assert await tier.get("k1") is None
    assert tier.may_contain("k1") is False
    assert os.stat(tier.path_for("k0")).st_nlink == 2
    assert await tier.get("k0") is not None
    assert await tier.get("k2") is not None
    await tier.flush()
    assert await tier.get("k0") is None


async def test_records_larger_than_one_read(tmp_path: Path) -> None:
    tier = local(tmp_path)
    big = [
        contract_entry(f"big{i}", os.urandom(READ_CHUNK + 1000), residency=KEEP) for i in range(3)
    ]
    await tier.set_many(big)
    for entry in big:
        got = await tier.get(entry.key)
        assert got is not None
        assert got.value == entry.value


async def test_a_hit_on_a_packed_entry_leaves_its_mtime_and_residency_to_its_batch(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    tier = LocalTier("dry", TierConfig("local", None, None), tmp_path, clock=clock)
    short = Residency(None, None, 10.0)
    await tier.set_many([contract_entry(k, b"v", residency=short) for k in ("a", "b")])
    written = os.stat(tier.path_for("b")).st_mtime
    clock.now += 6
    assert await tier.get("a") is not None
    assert os.stat(tier.path_for("b")).st_mtime == written, "a pack-mate was touched"
    clock.now += 6  # 12 s after the write: both past their dry residency
    assert await tier.get("a") is None
    assert await tier.get("b") is None


async def test_the_last_key_of_a_pack_is_a_file_of_its_own_again(tmp_path: Path) -> None:
    clock = FakeClock()
    tier = LocalTier("dry", TierConfig("local", None, None), tmp_path, clock=clock)
    short = Residency(None, None, 10.0)
    await tier.set_many([contract_entry(k, b"v", residency=short) for k in ("a", "b")])
    await tier.delete("b")
    clock.now += 6
    assert await tier.get("a") is not None  # touched: nothing shares its mtime any more
    clock.now += 6
    assert await tier.get("a") is not None


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(pack.MAGIC) + 2],  # inside the count
        lambda data: data[: len(pack.MAGIC) + 4 + 10],  # inside the slots
        lambda data: data[:-5],  # inside the last record
    ],
    ids=["count", "slots", "record"],
)
async def test_a_truncated_pack_is_a_miss_and_is_removed(
    tmp_path: Path, damage: object, caplog: pytest.LogCaptureFixture
) -> None:
    tier = local(tmp_path)
    entries = batch("k", 3)
    await tier.set_many(entries)
    last = tier.path_for(entries[-1].key)
    cut = damage(last.read_bytes())  # type: ignore[operator]
    last.unlink()  # its pack-mates keep the whole pack
    last.write_bytes(cut)  # the last key's record is the last in the pack
    assert await tier.get(entries[-1].key) is None
    assert not last.exists()
    assert "unreadable" in caplog.text
    assert await tier.get(entries[0].key) is not None


async def test_a_pack_without_the_keys_record_is_a_miss(tmp_path: Path) -> None:
    tier = local(tmp_path)
    await tier.set_many(batch("k", 2))
    tier.path_for("stranger").parent.mkdir(exist_ok=True)
    os.link(tier.path_for("k0"), tier.path_for("stranger"))
    assert await tier.get("stranger") is None
    assert not tier.path_for("stranger").exists()
    assert await tier.get("k0") is not None


async def test_another_tier_on_the_directory_reads_packed_entries(tmp_path: Path) -> None:
    writer, reader = local(tmp_path), local(tmp_path)
    assert reader.may_contain("k1") is False
    await writer.set_many(batch("k", 4))
    assert reader.may_contain("k1") is True
    got = await reader.get("k1")
    assert got is not None
    assert got.value == b"v" * 100 + b"1"


async def test_a_batch_that_cannot_be_written_fails_each_entry(tmp_path: Path) -> None:
    (tmp_path / "dry").write_text("not a directory")
    tier = local(tmp_path / "dry")
    results = await tier.set_many(batch("k", 3))
    assert len(results) == 3
    assert all(isinstance(r, OSError) for r in results)
    assert (await tier.stats()).entries == 0


async def test_files_of_the_two_level_layout_are_moved_up(tmp_path: Path) -> None:
    tier = local(tmp_path)
    await tier.set(contract_entry("old", b"kept", residency=KEEP))
    await tier.set(contract_entry("newer", b"new", residency=KEEP))
    # Lay them out as earlier versions did: ab/cd/abcd....tce
    for key in ("old", "newer"):
        path = tier.path_for(key)
        deeper = path.parent / path.name[2:4] / path.name
        deeper.parent.mkdir(exist_ok=True)
        os.link(path, deeper)
        if key == "old":
            path.unlink()
    crashed = deeper.parent / ".tmp-crashed"
    crashed.write_bytes(b"half")
    long_ago = time.time() - 2 * STALE_TEMP_SECONDS
    os.utime(crashed, (long_ago, long_ago))
    second = local(tmp_path)
    assert (await second.stats()).entries == 2
    got = await second.get("old")
    assert got is not None
    assert got.value == b"kept"
    assert nested_dirs(tmp_path) == []


class NoHardLinks(LocalTier):
    """A directory on a filesystem that refuses hard links (FAT, some network mounts)."""

    def _link(self, temp: str, rel: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted", rel)


async def test_without_hard_links_each_entry_gets_a_file_of_its_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tier = NoHardLinks("dry", TierConfig("local", None, None), tmp_path)
    first, second = batch("k", 3), batch("m", 3)
    assert await tier.set_many(first) == [None] * 3
    assert await tier.set_many(second) == [None] * 3
    assert caplog.text.count("no hard links") == 1
    for entry in first + second:
        got = await tier.get(entry.key)
        assert got is not None
        assert got.value == entry.value
        assert os.stat(tier.path_for(entry.key)).st_nlink == 1
    assert temp_files(tmp_path) == []
    assert (await tier.stats()).entries == 6
