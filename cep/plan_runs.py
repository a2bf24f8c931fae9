"""Plan runs in Redis: each occurrence's record, its per-partition audience snapshot and its atomic sends.

- `b:{plans}:state` HASH plan id -> "paused" | "cancelled" (absent: active).
- `b:{plans}:runs:<plan>` HASH occurrence id -> JSON {"status": "running" | "done" | "cancelled" |
  "missed", "version", "start_ms", "opened_ms", "local"?, "finished_ms"?}. The first process to find an
  occurrence due opens it (HSETNX): every process computes the same occurrence ids.
- `b:{p:<n>}:plansnap:<plan>:<occurrence>:<branch>` SET: the branch's members in partition n, snapshotted
  when the run reached the partition (branches after the first minus the earlier ones: a user in several
  branches gets only the first). Never written again until the run's part is done and it is dropped.
- `b:{p:<n>}:planrun:<plan>:<occurrence>` HASH {"state": "sending" | "done" | "cancelled", "targeted",
  "sent", "branch", "cursor"}: the partition's progress, `branch` and `cursor` being where the walk of
  the snapshots (SSCAN) stands.

Sending walks the snapshots with SSCAN. A step is one script in the partition's slot: if the stored
position is still the one the page was read from, it appends the page's `plan` events to the partition's
stream (as `cep.streams` appends: entry fields `b` and `n`, the backlog counter in the progress HASH) and
moves the position past the page — so each (plan, occurrence, user) is appended exactly once, whatever
crashes (a page read again from the same position of an unchanged SET is the same page), and the
partition owner's commit protocol makes processing it exactly once too. The events' ids
(`plan:<plan>:<occurrence>:<user>`) are deterministic besides. A walk rather than drawing and removing
members: SRANDMEMBER on a SET emptied by SREM slows down as its table turns sparse (measured: Redis CPU
per user four times higher at 1M members than at 5,000).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from cep.audience_members import snapshot_into
from cep.events import ORIGIN_PLAN, Event, encode_batch, partition_tag
from cep.journey_stats import read_counts
from cep.scripts import ScriptCall, run_scripts
from cep.streams import BATCH_FIELD, events_key, progress_key
from rules.plans import PLAN_EVENT, Occurrence, Plan, plan_journey_id

STATE_KEY = "b:{plans}:state"
PAUSED = "paused"
CANCELLED = "cancelled"
RUNNING = "running"
DONE = "done"
MISSED = "missed"
SENDING = "sending"
KEEP_RUNS = 200  # occurrences remembered per plan (the oldest are dropped)
PAGE = 1_000  # members per SSCAN page (a hint to Redis) and per send script call
SNAPSHOT_TTL_S = 30 * 86_400  # a run's snapshot outlives any sane run; a safety net against leaks

# KEYS[1] partition run HASH, KEYS[2] partition stream, KEYS[3] stream progress HASH
# ARGV[1] the branch and ARGV[2] the cursor the page was read at, ARGV[3] / ARGV[4] where the walk goes on,
# ARGV[5] the stream entry's field, ARGV[6] the encoded events ('' for none), ARGV[7] how many.
# Returns 1, or 0 (nothing done) when the position moved meanwhile: another sender (a lease changing hands
# mid-send) got there first; the caller reads again.
SEND_SCRIPT = """
if (redis.call('HGET', KEYS[1], 'branch') or '0') ~= ARGV[1] then return 0 end
if (redis.call('HGET', KEYS[1], 'cursor') or '0') ~= ARGV[2] then return 0 end
if ARGV[6] ~= '' then
  redis.call('XADD', KEYS[2], '*', ARGV[5], ARGV[6], 'n', ARGV[7])
  redis.call('HINCRBY', KEYS[3], 'added', ARGV[7])
  redis.call('HINCRBY', KEYS[1], 'sent', ARGV[7])
end
redis.call('HSET', KEYS[1], 'branch', ARGV[3], 'cursor', ARGV[4])
return 1
"""

# KEYS[1] partition run HASH, KEYS[2..] the snapshot SETs; ARGV[1] the final state (done | cancelled)
# Ends the partition's part of a run: drops what is left of the snapshots (a cancelled run's unsent users).
FINISH_SCRIPT = """
redis.call('DEL', unpack(KEYS, 2))
redis.call('HSET', KEYS[1], 'state', ARGV[1])
return 1
"""


def runs_key(plan_id: str) -> str:
    """HASH occurrence id -> JSON record of each run of a plan."""
    return f"b:{{plans}}:runs:{plan_id}"


def snapshot_key(partition: int, plan_id: str, occurrence: str, branch: int) -> str:
    """One branch's members of one partition still to be sent."""
    return f"b:{{{partition_tag(partition)}}}:plansnap:{plan_id}:{occurrence}:{branch}"


def partition_run_key(partition: int, plan_id: str, occurrence: str) -> str:
    """One partition's progress in one run."""
    return f"b:{{{partition_tag(partition)}}}:planrun:{plan_id}:{occurrence}"


@dataclass(frozen=True, slots=True)
class Run:
    """One occurrence's record."""

    plan_id: str
    occurrence: str
    status: str
    version: int
    start_ms: int
    record: dict[str, Any]


async def plan_states(redis: Redis) -> dict[str, str]:
    """Plans paused or cancelled (absent: active)."""
    raw: dict[Any, Any] = await redis.hgetall(STATE_KEY)
    return {_text(key): _text(value) for key, value in raw.items()}


async def set_state(redis: Redis, plan_id: str, state: str | None) -> None:
    """Pause or cancel a plan, or (None) make it active again."""
    if state is None:
        await redis.hdel(STATE_KEY, plan_id)
    else:
        await redis.hset(STATE_KEY, plan_id, state)


async def open_run(redis: Redis, plan: Plan, occurrence: Occurrence, now_ms: int) -> bool:
    """Record an occurrence as running (or missed, when found after its deadline); False if it was known."""
    status = MISSED if now_ms > occurrence.deadline_ms else RUNNING
    record: dict[str, Any] = {
        "status": status,
        "version": plan.version,
        "start_ms": occurrence.start_ms,
        "opened_ms": now_ms,
    }
    if occurrence.local:
        record["local"] = occurrence.local
    if status == MISSED:
        record["finished_ms"] = now_ms
    created = bool(await redis.hsetnx(runs_key(plan.id), occurrence.id, json.dumps(record)))
    if created and await redis.hlen(runs_key(plan.id)) > KEEP_RUNS:
        await _drop_oldest(redis, plan.id)
    return created


async def _drop_oldest(redis: Redis, plan_id: str) -> None:
    runs = await read_runs(redis, plan_id)
    finished = [run for run in runs if run.status != RUNNING]
    for run in sorted(finished, key=lambda item: item.start_ms)[: len(runs) - KEEP_RUNS]:
        await redis.hdel(runs_key(plan_id), run.occurrence)


async def read_runs(redis: Redis, plan_id: str) -> list[Run]:
    """Every remembered run of a plan, newest first."""
    raw: dict[Any, Any] = await redis.hgetall(runs_key(plan_id))
    runs = []
    for key, value in raw.items():
        record = json.loads(value)
        runs.append(Run(plan_id, _text(key), record["status"], int(record["version"]), int(record["start_ms"]), record))
    return sorted(runs, key=lambda run: run.start_ms, reverse=True)


async def set_status(redis: Redis, run: Run, status: str, now_ms: int) -> None:
    """Move a run to `done` or `cancelled` (kept if it already ended)."""
    current = await redis.hget(runs_key(run.plan_id), run.occurrence)
    if current is None:
        return
    record = json.loads(current)
    if record["status"] != RUNNING:
        return
    record.update(status=status, finished_ms=now_ms)
    await redis.hset(runs_key(run.plan_id), run.occurrence, json.dumps(record))


async def partition_state(redis: Redis, partition: int, run: Run) -> str | None:
    """The partition's state in a run (None: not snapshotted yet)."""
    raw = await redis.hget(partition_run_key(partition, run.plan_id, run.occurrence), "state")
    return _text(raw) if raw is not None else None


async def snapshot(redis: Redis, partition: int, plan: Plan, run: Run, audiences: dict[str, dict[str, Any]]) -> None:
    """Take the partition's members of every branch (each minus the earlier ones), then mark it sending.

    Done again from scratch if interrupted before the mark (nothing is sent before it)."""
    keys = [snapshot_key(partition, plan.id, run.occurrence, index) for index in range(len(plan.branches))]
    targeted = 0
    for index, branch in enumerate(plan.branches):
        await snapshot_into(redis, partition, keys[index], branch.audience, audiences, keys[:index])
        await redis.expire(keys[index], SNAPSHOT_TTL_S)
        targeted += int(await redis.scard(keys[index]))
    await redis.hset(
        partition_run_key(partition, plan.id, run.occurrence),
        mapping={"state": SENDING, "targeted": targeted, "sent": 0},
    )
    await redis.expire(partition_run_key(partition, plan.id, run.occurrence), SNAPSHOT_TTL_S)


async def send(redis: Redis, partition: int, plan: Plan, run: Run, most: int, now_ms: int) -> tuple[int, bool]:
    """Append about `most` members' plan events (SSCAN pages), branch by branch; (sent, the partition is done)."""
    run_key = partition_run_key(partition, plan.id, run.occurrence)
    sent = 0
    while sent < most:
        raw: list[Any] = await redis.hmget(run_key, ["branch", "cursor"])
        branch, cursor = int(raw[0] or 0), int(raw[1] or 0)
        if branch >= len(plan.branches):
            await finish(redis, partition, plan.id, len(plan.branches), run.occurrence, DONE)
            return sent, True
        page: Any = await redis.sscan(
            snapshot_key(partition, plan.id, run.occurrence, branch), cursor, count=min(most - sent, PAGE)
        )
        after, members = int(page[0]), [_text(member) for member in page[1]]
        events = [_plan_event(plan, run, branch, user, now_ms) for user in members]
        goes_on = (branch, after) if after else (branch + 1, 0)
        args = [branch, cursor, *goes_on, BATCH_FIELD, encode_batch(events) if events else b"", len(events)]
        keys = [run_key, events_key(partition), progress_key(partition)]
        (moved,) = await run_scripts(redis, [ScriptCall(SEND_SCRIPT, keys, args)])
        if int(moved):
            sent += len(events)
    return sent, False


async def finish(redis: Redis, partition: int, plan_id: str, branches: int, occurrence: str, state: str) -> None:
    """End the partition's part of a run (`done`, or `cancelled` dropping what was left to send)."""
    keys = [partition_run_key(partition, plan_id, occurrence)]
    keys += [snapshot_key(partition, plan_id, occurrence, index) for index in range(branches)]
    await run_scripts(redis, [ScriptCall(FINISH_SCRIPT, keys, [state])])


def _plan_event(plan: Plan, run: Run, branch: int, user_id: str, now_ms: int) -> Event:
    attrs: dict[str, Any] = {**(plan.attrs or {}), "plan": plan.id, "occurrence": run.occurrence, "branch": branch}
    local = run.record.get("local")
    if local:
        attrs["local"] = local
    return Event(f"plan:{plan.id}:{run.occurrence}:{user_id}", user_id, PLAN_EVENT, now_ms, attrs, now_ms, ORIGIN_PLAN)


async def progress(redis: Redis, partitions: int, run: Run) -> dict[str, Any]:
    """A run's counts over the partitions: targeted, sent, and partitions done / not yet snapshotted."""
    async with redis.pipeline(transaction=False) as pipe:
        for partition in range(partitions):
            pipe.hgetall(partition_run_key(partition, run.plan_id, run.occurrence))
        replies: list[dict[Any, Any]] = await pipe.execute()
    totals = {"targeted": 0, "sent": 0, "partitions_done": 0, "partitions_pending": 0}
    for reply in replies:
        fields = {_text(key): _text(value) for key, value in reply.items()}
        totals["targeted"] += int(fields.get("targeted", 0))
        totals["sent"] += int(fields.get("sent", 0))
        state = fields.get("state")
        if state in (DONE, CANCELLED):
            totals["partitions_done"] += 1
        elif state is None:
            totals["partitions_pending"] += 1
    return totals


async def outcomes(redis: Redis, partitions: int, plan_id: str) -> dict[str, dict[str, int]]:
    """Per occurrence, what the plan's events did to users: entered, blocked by reason (committed counters)."""
    found: dict[str, dict[str, int]] = {}
    for field, count in (await read_counts(redis, partitions, plan_journey_id(plan_id))).items():
        _version, node, what = field.split("|", 2)
        if node.startswith("run:"):
            found.setdefault(node.removeprefix("run:"), {})[what] = count
    return found


async def runs_view(redis: Redis, partitions: int, plan_id: str) -> list[dict[str, Any]]:
    """Every remembered run, newest first: its record, targeted and sent (summed over the partitions),
    partitions done, and what its events did to users (entered, blocked by reason)."""
    found = await outcomes(redis, partitions, plan_id)
    views = []
    for run in await read_runs(redis, plan_id):
        counts = await progress(redis, partitions, run)
        done = found.get(run.occurrence, {})
        views.append(
            {
                "occurrence": run.occurrence,
                **run.record,
                "targeted": counts["targeted"],
                "sent": counts["sent"],
                "entered": done.get("entered", 0),
                "blocked": {what.removeprefix("blocked:"): n for what, n in sorted(done.items()) if what != "entered"},
                "partitions_done": counts["partitions_done"],
            }
        )
    return views


async def forget(redis: Redis, partitions: int, plan: Plan) -> None:
    """Drop a deleted plan's runs, snapshots and state (its counters are the journey statistics')."""
    for run in await read_runs(redis, plan.id):
        for partition in range(partitions):
            await finish(redis, partition, plan.id, len(plan.branches), run.occurrence, CANCELLED)
            await redis.delete(partition_run_key(partition, plan.id, run.occurrence))
    await redis.delete(runs_key(plan.id))
    await redis.hdel(STATE_KEY, plan.id)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
