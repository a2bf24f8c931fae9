"""Issue 15's fault suite: Redis hung, restarted, full of memory, out of disk, while a steady producer posts
and the connectors deliver. Each test asserts (tests/faults/rig.run_fault): every request was answered 200
or 503 with Retry-After (never a 500) and all were acknowledged in the end; acknowledged = processed; one
action per event, delivered, applied once by the provider; no process died; and what /healthz said.

SIGKILLs of `beacon serve`, `beacon worker`, `beacon connectors` and Redis under a producer are the chaos
test's (tests/chaos), not repeated here. `-s` prints each run's figures (docs/operations.md quotes them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from measure.archive_query import query
from tests.faults.producer import SteadyProducer
from tests.faults.rig import Rig, known, run_fault, running_rig
from tests.harness import eventually

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

FREEZE_S = 4.0  # > the health PING's 2 s and the producer's 2.5 s request timeout; < the cluster's 5 s node timeout
HOLD_S = 3.0  # how long Redis keeps refusing writes once it has started to
REFUSAL_DEADLINE_S = 20.0  # for the producer to drive Redis into refusing
PRODUCED = re.compile(r"f\d+")  # the producer's event ids (the delivery outcomes' events are the engine's)
# DuckDB's error when the archiver could not write a Parquet file (the drain is retried, nothing trimmed).
ARCHIVE_FULL = re.compile(r"Could not write file .*archive.*No space left on device")


def _pid(rig: Rig, server: int) -> int:
    return int((rig.backend.servers[server].data_dir / "server.pid").read_text())


def _victim(rig: Rig) -> int:
    """The server of the fault: the single one, or the cluster master holding partition 0 (others serve on)."""
    return rig.backend.server_of(0)


async def _refused_since(producer: SteadyProducer, before: int) -> bool:
    return producer.replies["503"] > before


async def sigstop_redis(rig: Rig, producer: SteadyProducer) -> None:
    """Freeze Redis (SIGSTOP): its sockets stay open and nothing answers; then let it run on."""
    server = _victim(rig)
    pid = _pid(rig, server)
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(FREEZE_S)  # the fault's length, not a wait for something to happen
    finally:
        os.kill(pid, signal.SIGCONT)
    rig.notes["server"] = server


async def restart_redis(rig: Rig, producer: SteadyProducer) -> None:
    """Shut Redis down cleanly (SIGTERM: AOF flushed) and start it again on the same data dir and port."""
    server = _victim(rig)
    started = time.monotonic()
    await asyncio.to_thread(rig.backend.servers[server].stop)
    await asyncio.to_thread(rig.backend.restart, server)
    rig.notes["server"] = server
    rig.notes["redis_down_s"] = round(time.monotonic() - started, 2)


async def redis_at_maxmemory(rig: Rig, producer: SteadyProducer) -> None:
    """Cap Redis's memory just above what it uses (noeviction) until the producer's appends hit it and ingest
    refuses; hold that for HOLD_S; lift the cap."""
    server = _victim(rig)
    node = rig.server_client(server)
    before = producer.replies["503"]
    try:
        used = int((await node.info("memory"))["used_memory"])
        await node.config_set("maxmemory-policy", "noeviction")
        await node.config_set("maxmemory", used + 64 * 1024)
        refused = await eventually(lambda: _refused_since(producer, before), bool, REFUSAL_DEADLINE_S)
        assert refused, f"Redis never refused a write: {producer.replies}"
        await asyncio.sleep(HOLD_S)  # the fault's length
    finally:
        await node.config_set("maxmemory", 0)
        await node.aclose()
    rig.notes["server"] = server


@contextlib.contextmanager
def _tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A small tmpfs mounted for the test; skipped where mounting is not permitted (not root)."""
    mount_point.mkdir(parents=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MB filesystem to fill."""
    with _tmpfs(tmp_path / "disk", "24m") as mount_point:
        yield mount_point


async def disk_full(rig: Rig, producer: SteadyProducer) -> None:
    """Fill the filesystem of Redis's AOF until Redis refuses writes (MISCONF); hold that HOLD_S; free it."""
    data_dir = rig.backend.servers[0].data_dir
    filler = data_dir.parent / "filler"
    before = producer.replies["503"]
    try:
        free = os.statvfs(data_dir).f_bavail * os.statvfs(data_dir).f_frsize
        await asyncio.to_thread(_fill, filler, free)
        refused = await eventually(lambda: _refused_since(producer, before), bool, REFUSAL_DEADLINE_S)
        assert refused, f"Redis never refused a write on a full disk: {producer.replies}"
        # Its own log is on the full disk too: ask Redis why it refuses.
        node = rig.server_client(0)
        try:
            rig.notes["aof_last_write_status"] = (await node.info("persistence"))["aof_last_write_status"]
        finally:
            await node.aclose()
        await asyncio.sleep(HOLD_S)  # the fault's length
    finally:
        filler.unlink(missing_ok=True)


async def archive_disk_full(rig: Rig, producer: SteadyProducer) -> None:
    """Fill the filesystem of the event archive (Redis has room) until the archiver fails to write a file;
    hold that HOLD_S; free it."""
    archive_dir = Path(rig.serve.env["BEACON_DATA_DIR"])
    filler = archive_dir.parent / "filler"
    try:
        free = os.statvfs(archive_dir).f_bavail * os.statvfs(archive_dir).f_frsize
        await asyncio.to_thread(_fill, filler, free)
        met = await eventually(lambda: known(ARCHIVE_FULL.search(rig.serve.log_text())), bool, REFUSAL_DEADLINE_S)
        assert met, "the archiver never met the full disk"
        await asyncio.sleep(HOLD_S)  # the fault's length
    finally:
        filler.unlink(missing_ok=True)


def _fill(path: Path, size: int) -> None:
    """Write zeros until the filesystem is full (tmpfs allocates as it is written)."""
    chunk = b"\0" * (1 << 20)
    with path.open("wb") as out:
        try:
            for _ in range(size // len(chunk) + 1):
                out.write(chunk)
            out.flush()
        except OSError:
            pass  # ENOSPC: full, which is the point


@pytest.mark.parametrize("kind", ["single", "cluster"])
async def test_redis_frozen_past_the_timeouts(tmp_path: Path, kind: str) -> None:
    """A hung Redis (SIGSTOP): requests time out and are resent, /healthz 503 while it lasts, nothing lost."""
    async with running_rig(kind, tmp_path) as rig:
        report = await run_fault(rig, sigstop_redis, "sigstop")
    assert report["unhealthy_during_fault"], report
    assert report["healthy_after_lift_s"] is not None, report
    if kind == "single":  # a frozen single Redis holds every request past the producer's timeout
        assert report["replies"].get("timeout", 0) > 0, report


async def test_redis_restarted_cleanly(tmp_path: Path) -> None:
    """A clean Redis restart (same data dir, AOF on) under load: refused requests resent, nothing lost."""
    async with running_rig("single", tmp_path) as rig:
        report = await run_fault(rig, restart_redis, "restart")
    assert report["healthy_after_lift_s"] is not None, report


@pytest.mark.parametrize("kind", ["single", "cluster"])
async def test_redis_at_maxmemory(tmp_path: Path, kind: str) -> None:
    """Redis at maxmemory (noeviction): ingest 503 + Retry-After, /healthz reports it, processing resumes."""
    async with running_rig(kind, tmp_path) as rig:
        report = await run_fault(rig, redis_at_maxmemory, "maxmemory")
    assert report["replies"]["503"] > 0, report
    assert report["unhealthy_during_fault"], report
    assert report["healthy_after_lift_s"] is not None, report


async def test_redis_disk_full(tmp_path: Path, small_disk: Path) -> None:
    """Redis's AOF on a full disk: writes refused (MISCONF) as 503s, resumes by itself once space is freed."""
    # Acks wait for the AOF fsync (WAITAOF) 1 s rather than 5 s: within the producer's request timeout, so
    # what the server answers when the fsync never comes is seen (it was a 500).
    async with running_rig(
        "single", tmp_path, redis_dir=small_disk / "redis", BEACON_ACK_FSYNC_TIMEOUT_MS="1000"
    ) as rig:
        report = await run_fault(rig, disk_full, "disk_full")
    assert report["aof_last_write_status"] == "err", report
    assert report["replies"]["503"] > 0, report
    assert report["unhealthy_during_fault"], report
    assert report["healthy_after_lift_s"] is not None, report


async def test_archive_disk_full(tmp_path: Path, small_disk: Path) -> None:
    """The event archive's data dir on a full disk: the archiver's drains fail and are retried, nothing is
    trimmed unwritten; once space is freed each event and each action is in the archive once."""
    archive_dir = small_disk / "beacon"
    env = {"BEACON_DATA_DIR": str(archive_dir), "BEACON_ARCHIVE": "1", "BEACON_ARCHIVE_FLUSH_MS": "200"}
    async with running_rig("single", tmp_path, **env) as rig:
        report = await run_fault(rig, archive_disk_full, "archive_disk_full")
        events = await eventually(lambda: _archived(archive_dir, "events", "event_id"), _all_in(report["events"]), 30)
        actions = await eventually(lambda: _archived(archive_dir, "actions", "action_id"), _all_in(report["actions"]))
    assert _all_in(report["events"])(events) and set(events.values()) == {1}, "events not archived once each"
    assert _all_in(report["actions"])(actions) and set(actions.values()) == {1}, "actions not archived once each"


async def _archived(data_dir: Path, table: str, column: str) -> dict[str, int]:
    """How many rows the archive holds per producer event id (or per action id)."""
    sql = f"SELECT {column}, count(*) FROM {table} GROUP BY 1"
    rows = await asyncio.to_thread(query, data_dir, sql)
    return {str(key): int(count) for key, count in rows if table != "events" or PRODUCED.fullmatch(str(key))}


def _all_in(expected: int) -> Callable[[dict[str, int]], bool]:
    return lambda found: len(found) == expected
