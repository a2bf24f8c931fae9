"""Helpers of the journey scenario tests: the library journeys, and the journey endpoints as plain values."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from cep import timers
from cep.evaluator import timer_user
from cep.outbox import OUTBOX_FIELD, outbox_key
from tests.chaos.processes import BeaconProcess
from tests.harness import Beacon
from tests.scenarios.library import LIBRARY

JOURNEYS = LIBRARY / "journeys"


def library_journey(name: str) -> dict[str, Any]:
    """One journey document from rules/library/journeys by file stem."""
    return dict(json.loads((JOURNEYS / f"{name}.json").read_text()))


def journey_names() -> list[str]:
    """Every journey of the library."""
    return sorted(path.stem for path in Path(JOURNEYS).glob("*.json"))


async def put_journey(beacon: Beacon, document: dict[str, Any]) -> int:
    """PUT a journey; returns its version (asserts success)."""
    status, body = await beacon.call("PUT", f"/v1/journeys/{document['id']}", json=document)
    assert status == 200, body
    return int(body["version"])


async def journey_stats(beacon: Beacon, journey_id: str) -> dict[str, Any]:
    """`GET /v1/journeys/{id}/stats`: {version: {"journey": {...}, "nodes": {...}}} (asserts success)."""
    status, body = await beacon.call("GET", f"/v1/journeys/{journey_id}/stats")
    assert status == 200, body
    return dict(body["versions"])


def node_counts(stats: dict[str, Any], node: str, version: int = 1) -> dict[str, Any]:
    """One node's counts in a stats view; all zero (and no `left`) for a node no instance reached."""
    found = stats.get(str(version), {}).get("nodes", {}).get(node)
    return found if found is not None else {"entered": 0, "waiting": 0, "exited": 0, "converted": 0, "left": {}}


def journey_counts(stats: dict[str, Any], version: int = 1) -> dict[str, Any]:
    """The journey-wide counts of one version in a stats view."""
    return dict(stats[str(version)]["journey"])


def waiting_total(stats: dict[str, Any]) -> int:
    """Instances waiting now, over every node of every version."""
    return sum(node["waiting"] for view in stats.values() for node in view["nodes"].values())


async def user_view(beacon: Beacon, user_id: str) -> dict[str, Any]:
    """`GET /v1/users/{id}` (asserts success)."""
    status, body = await beacon.call("GET", f"/v1/users/{user_id}")
    assert status == 200, body
    return dict(body)


async def user_trace(beacon: Beacon, user_id: str, limit: int = 100) -> list[dict[str, Any]]:
    """`GET /v1/users/{id}/trace`, newest first (asserts success and that tracing is on)."""
    status, body = await beacon.call("GET", f"/v1/users/{user_id}/trace", params={"limit": str(limit)})
    assert status == 200, body
    assert body["tracing"] is True
    return list(body["trace"])


def journey_steps(trace: list[dict[str, Any]], journey_id: str) -> list[tuple[str, str]]:
    """A trace's journey entries as (node, what), oldest first."""
    return [(e["node"], e["what"]) for e in reversed(trace) if e["kind"] == "journey" and e["journey_id"] == journey_id]


def by_node(actions: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """A user's ledger actions grouped by the journey node that created them."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for action in actions:
        grouped.setdefault(action["node_id"], []).append(action)
    return grouped


async def user_timers(redis: aioredis.Redis, partitions: int, user_id: str) -> list[str]:
    """The members of the partitions' timer sets that belong to a user (journey waits, absences, delays)."""
    found: list[str] = []
    for partition in range(partitions):
        members: Any = await redis.zrange(timers.timers_key(partition), 0, -1)
        for raw in members:
            member = raw.decode()
            if timer_user(member) == user_id:
                found.append(member)
    return found


async def outbox_action_ids(redis: aioredis.Redis, partitions: int) -> list[str]:
    """The action id of every outbox entry, in every partition (undelivered: nothing trims them)."""
    found: list[str] = []
    for partition in range(partitions):
        entries: Any = await redis.xrange(outbox_key(partition))
        for _entry_id, fields in entries:
            found.append(json.loads(fields[OUTBOX_FIELD])["action_id"])
    return found


class ServeClient:
    """HTTP calls on a `beacon serve` subprocess (the harness's Beacon needs an in-process TestServer)."""

    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self.session = session
        self.base = f"http://127.0.0.1:{port}"

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """Status and decoded JSON body of one request."""
        timeout = aiohttp.ClientTimeout(total=10)
        async with self.session.request(method, self.base + path, timeout=timeout, **kwargs) as response:
            return response.status, await response.json(content_type=None)

    async def post_until_acknowledged(self, events: list[dict[str, Any]], chunk: int) -> None:
        """POST the events `chunk` at a time, each request retried until acknowledged, as a producer does
        across a server's crashes (the same ids again: the engine drops what it already has)."""
        for first in range(0, len(events), chunk):
            while True:
                try:
                    status, _ = await self.call("POST", "/v1/events", json={"events": events[first : first + chunk]})
                    if status == 200:
                        break
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.02)

    async def actions(self, user_id: str) -> list[dict[str, Any]]:
        """A user's ledger (asserts success)."""
        status, body = await self.call("GET", "/v1/actions", params={"user_id": user_id})
        assert status == 200, body
        return list(body["actions"])


async def kill9_with_steps_due(
    process: BeaconProcess, redis: aioredis.Redis, partitions: int, rng: random.Random, wait_s: float
) -> str:
    """SIGKILL the process, preferably while journey steps are due and not committed yet.

    Due timers are read by the partition owners with their batch and leave the timer set in the batch's
    commit, so a due timer still in the set is a step not taken yet or being taken right now. The process
    is frozen (SIGSTOP) at short random intervals and looked at while frozen: killed if such a timer is
    there, else resumed; after `wait_s` it is killed wherever it is. Returns what the kill interrupted.
    """
    deadline = time.monotonic() + wait_s
    while True:
        await asyncio.sleep(rng.uniform(0.005, 0.05))
        process.sigstop()
        now = int(time.time() * 1000)
        due = sum([await redis.zcount(timers.timers_key(p), "-inf", now) for p in range(partitions)])
        if due or time.monotonic() > deadline:
            process.kill9()
            return f"{due} due steps uncommitted" if due else "idle"
        process.sigcont()
