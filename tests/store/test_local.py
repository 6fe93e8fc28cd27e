"""LocalTier: the tier contract, hashed names, atomic writes, corrupt files, the size cap.
Batches (pack files) are in test_local_pack.py."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.store.tier_contract import MakeTier, TierContract, contract_entry
from tiercache_mw.config import TierConfig
from tiercache_mw.store.base import Tier
from tiercache_mw.store.entry import Residency
from tiercache_mw.store.local import STALE_TEMP_SECONDS, LocalTier


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class TestLocalTier(TierContract):
    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def make_tier(self, tmp_path: Path, clock: FakeClock) -> MakeTier:
        self._clock = clock
        return lambda name: LocalTier(
            name, TierConfig("local", None, None), tmp_path / name, clock=clock
        )

    async def advance(self, tier: Tier, seconds: float) -> None:
        self._clock.now += seconds


def temp_files(root: Path) -> list[Path]:
    return list(root.rglob(".tmp-*"))


def local(root: Path, max_bytes: int | None = None) -> LocalTier:
    return LocalTier("dry", TierConfig("local", None, max_bytes), root)


async def test_no_key_becomes_a_path(tmp_path: Path) -> None:
    tier = local(tmp_path / "dry")
    await tier.set(contract_entry("../../escape", b"x"))
    files = [p for p in (tmp_path / "dry").rglob("*") if p.is_file()]
    assert len(files) == 1
    assert files[0].is_relative_to(tmp_path / "dry")
    assert "escape" not in str(files[0])
    assert len(files[0].name) == 64 + len(".tce")
    assert not (tmp_path / "escape").exists()


async def test_write_leaves_no_temp_file(tmp_path: Path) -> None:
    tier = local(tmp_path)
    for n in range(20):
        await tier.set(contract_entry(f"k{n}", os.urandom(1000)))
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize(
    "damage",
    [lambda data: data[: len(data) // 2], lambda data: b"\x00garbage", lambda data: b""],
    ids=["truncated", "garbage", "empty"],
)
async def test_corrupt_file_is_a_miss_and_is_removed(
    tmp_path: Path, damage: object, caplog: pytest.LogCaptureFixture
) -> None:
    tier = local(tmp_path)
    await tier.set(contract_entry("k", b"v" * 500))
    path = tier.path_for("k")
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    assert await tier.get("k") is None
    assert not path.exists()
    assert "unreadable" in caplog.text
    assert (await tier.stats()).entries == 0


async def test_a_file_holding_another_key_is_a_miss(tmp_path: Path) -> None:
    tier = local(tmp_path)
    await tier.set(contract_entry("other", b"v"))
    os.makedirs(tier.path_for("mine").parent, exist_ok=True)
    os.replace(tier.path_for("other"), tier.path_for("mine"))
    assert await tier.get("mine") is None
    assert not tier.path_for("mine").exists()


async def test_size_cap_removes_least_recently_used_first(tmp_path: Path) -> None:
    clock = [1_700_000_000.0]
    tier = LocalTier("dry", TierConfig("local", None, 20_000), tmp_path, clock=lambda: clock[0])
    removed: list[str] = []
    tier.on_remove = removed.extend
    for n in range(10):
        clock[0] += 1
        await tier.set(contract_entry(f"k{n}", b"x" * 1800))
    clock[0] += 1
    assert await tier.get("k0") is not None  # used again: now the newest
    for n in range(10, 14):
        clock[0] += 1
        await tier.set(contract_entry(f"k{n}", b"x" * 1800))
        assert (await tier.stats()).size_bytes <= 20_000
    assert await tier.get("k0") is not None
    assert await tier.get("k1") is None
    assert "k1" in removed
    assert await tier.get("k13") is not None


async def test_a_new_tier_on_the_same_directory_finds_the_files(tmp_path: Path) -> None:
    first = local(tmp_path)
    await first.set(contract_entry("k", b"kept", residency=Residency(None, None, 3600.0)))
    (tmp_path / "ab").mkdir(exist_ok=True)
    crashed, in_flight = tmp_path / "ab" / ".tmp-crashed", tmp_path / "ab" / ".tmp-linking"
    crashed.write_bytes(b"half")
    long_ago = time.time() - 2 * STALE_TEMP_SECONDS
    os.utime(crashed, (long_ago, long_ago))
    in_flight.write_bytes(b"a pack another process is linking")
    second = local(tmp_path)
    assert (await second.stats()).entries == 1
    got = await second.get("k")
    assert got is not None
    assert got.value == b"kept"
    assert not crashed.exists()
    assert in_flight.exists()


async def test_flush_leaves_other_files_in_the_directory(tmp_path: Path) -> None:
    tier = local(tmp_path)
    (tmp_path / "README").write_text("mine")
    await tier.set(contract_entry("k"))
    await tier.flush()
    assert (tmp_path / "README").read_text() == "mine"
    assert await tier.get("k") is None


async def test_may_contain_sees_files_another_tier_instance_wrote(tmp_path: Path) -> None:
    reader = local(tmp_path)
    writer = local(tmp_path)  # another process sharing the directory: its own index
    assert reader.may_contain("k") is False
    await writer.set(contract_entry("k", b"v", residency=Residency(None, None, 3600.0)))
    assert reader.may_contain("k") is True
    await writer.delete("k")
    assert reader.may_contain("k") is False
