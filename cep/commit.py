"""The partition owner's commit: one batch's effects written in ONE atomic call on the partition's slot.

Changed user records, new ledger entries, outbox appends, released or cancelled delayed actions,
timer adds and removes, quarantined entries, entries handed to other partitions (`cep.handoff`) and the
new stream position all go in one script call, which first checks the partition's lease epoch
(`cep.ownership`): a process that lost the lease — paused, partitioned, or just slow — can no longer
write anything (fencing, as Kafka's producer epochs). Either the whole batch is committed with its
position, or nothing is and the next owner (or this one, after dropping its cache) processes the same
entries again from the same state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from cep.archive_stream import archive_key
from cep.handoff import handoff_fields, handoff_key
from cep.item_index import ItemMark, item_key
from cep.journey_stats import stats_key
from cep.merge_items import Handoff
from cep.outbox import RECENT_MAXLEN, outbox_key, recent_key
from cep.ownership import epoch_key
from cep.scripts import ScriptCall, run_scripts
from cep.segment_members import members_key, sizes_key
from cep.streams import PROGRESS_COUNT, PROGRESS_ID, QUARANTINE_MAXLEN, progress_key, quarantine_key
from cep.timers import timers_key
from cep.user_state import LEDGER, LEDGER_INDEX, LEDGER_STATUS, STATE, TRACE, user_key

FENCED = "FENCED"
STALE = "STALE"

# KEYS[1] epoch STRING: the partition's lease epoch    KEYS[2] progress HASH {id, n}
# KEYS[3] timers ZSET member -> due                    KEYS[4] outbox STREAM (field `a`: record JSON)
# KEYS[5] recent STREAM (capped: u, a)                 KEYS[6] quarantine STREAM (capped)
# KEYS[7..] per-user keys (state records, ledgers), addressed by index from the plan
# ARGV[1] the epoch the caller holds
# ARGV[2] msgpack plan {now, retention, recent_max, quarantine_max, from, id?, n,
#   n: items committed (added to progress.n), put: [ki, record, ttl_ms, ...] (ttl 0: no expiry), del: [ki, ...],
#   acts: [[acts ki, actx ki, astat ki, user, [action id, record JSON, status JSON, queue now?], ...], ...],
#   rel: [[acts ki, astat ki, action id, cancel?, user], ...]   (delayed actions falling due)
#   tadd: [due, member, ...], trem: [member, ...], quar: [[field, value, ...], ...],
#   cnt: [[hash ki, field, delta, ...], ...]       (journey statistics, segment sizes: HINCRBY)
#   mem: [[members ki, user, +1 | -1], ...]        (segment members, cep.segment_members, in order)
#   item: [[item ki, user, ts, window ms], ...]    (item index, cep.item_index)
#   trace: [[trace ki, depth, ttl_ms, batch], ...]  (per-user trace: one element per user and batch)
#   hk: handoff STREAM ki (0: none), hand: [[field, value, ...], ...]  (entries for other partitions, cep.handoff)
#   ak: archive STREAM ki (0: not archived), ae: events record, aa: actions record  (cep.archive_stream)}
# Returns 1; an error reply starting with FENCED when the epoch moved, or STALE when the stored position
# is not `from` (then nothing was written).
COMMIT_SCRIPT = r"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED the partition lease moved to another owner')
end
local plan = cmsgpack.unpack(ARGV[2])
-- The batch was read after `from`: if the stored position differs, this owner's view is stale (a
-- commit whose reply was lost, or one a Redis restart rolled back). Apply nothing; it re-reads.
if (redis.call('HGET', KEYS[2], 'id') or '0-0') ~= plan.from then
  return redis.error_reply('STALE the stored position is not the one this batch was read after')
end
local now = tonumber(plan.now)
local retention = tonumber(plan.retention)

-- unpack() is limited by Lua's C stack: apply a long argument list in slices.
local function sliced(command, key, items, width)
  local step = 1000 * width
  for first = 1, #items, step do
    redis.call(command, key, unpack(items, first, math.min(first + step - 1, #items)))
  end
end

for i = 1, #plan.put, 3 do
  local ttl = tonumber(plan.put[i + 2])
  if ttl > 0 then
    redis.call('SET', KEYS[plan.put[i]], plan.put[i + 1], 'PX', ttl)
  else
    redis.call('SET', KEYS[plan.put[i]], plan.put[i + 1])
  end
end
for _, ki in ipairs(plan.del) do redis.call('DEL', KEYS[ki]) end

-- Archived actions the ledger already held (written and archived before), and delayed ones cancelled here.
local not_written, cancelled = {}, {}
for _, group in ipairs(plan.acts) do
  -- One user's new actions: [acts ki, actx ki, astat ki, user, [id, record, status, queue?], ...]. Each is
  -- written once (an id already in the ledger is a batch processed again), with one command per ledger
  -- key for the whole group rather than three per action.
  local acts, actx, astat, user = KEYS[group[1]], KEYS[group[2]], KEYS[group[3]], group[4]
  local ids = {}
  for i = 5, #group do ids[#ids + 1] = group[i][1] end
  local found = {}
  for first = 1, #ids, 1000 do
    local known = redis.call('HMGET', acts, unpack(ids, first, math.min(first + 999, #ids)))
    for j = 1, #known do found[first + j - 1] = known[j] end
  end
  local records, stamps, statuses, fresh = {}, {}, {}, {}
  for i = 5, #group do
    local act = group[i]
    if not found[i - 4] and not fresh[act[1]] then
      fresh[act[1]] = true
      records[#records + 1] = act[1]; records[#records + 1] = act[2]
      stamps[#stamps + 1] = now; stamps[#stamps + 1] = act[1]
      statuses[#statuses + 1] = act[1]; statuses[#statuses + 1] = act[3]
      if act[4] then redis.call('XADD', KEYS[4], '*', 'a', act[2]) end
      redis.call('XADD', KEYS[5], 'MAXLEN', '~', plan.recent_max, '*', 'u', user, 'a', act[1])
    else
      not_written[#not_written + 1] = act[1]
    end
  end
  if #records > 0 then
    sliced('HSET', acts, records, 2)
    sliced('ZADD', actx, stamps, 2)
    sliced('HSET', astat, statuses, 2)
  end
  -- Ledger retention: this user's oldest entries go as new ones arrive; idle ledgers expire whole.
  local old = redis.call('ZRANGEBYSCORE', actx, '-inf', now - retention, 'LIMIT', 0, 256)
  if #old > 0 then
    redis.call('ZREM', actx, unpack(old))
    redis.call('HDEL', acts, unpack(old))
    redis.call('HDEL', astat, unpack(old))
  end
  redis.call('PEXPIRE', acts, retention)
  redis.call('PEXPIRE', actx, retention)
  redis.call('PEXPIRE', astat, retention)
end

for _, rel in ipairs(plan.rel) do
  local raw = redis.call('HGET', KEYS[rel[2]], rel[3])
  if raw then
    local status = cjson.decode(raw)
    if status.status == 'scheduled' then
      status.updated_at = now
      if rel[4] then
        status.status = 'cancelled'
        status.reason = 'ruleset_deleted'
        cancelled[#cancelled + 1] = {rel[5], rel[3]}
      else
        status.status = 'pending'
        redis.call('XADD', KEYS[4], '*', 'a', redis.call('HGET', KEYS[rel[1]], rel[3]))
      end
      redis.call('HSET', KEYS[rel[2]], rel[3], cjson.encode(status))
    end
  end
end

if #plan.tadd > 0 then sliced('ZADD', KEYS[3], plan.tadd, 2) end
if #plan.trem > 0 then sliced('ZREM', KEYS[3], plan.trem, 1) end
for _, fields in ipairs(plan.quar) do
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', plan.quarantine_max, '*', unpack(fields))
end
for _, counts in ipairs(plan.cnt) do
  for i = 2, #counts, 2 do redis.call('HINCRBY', KEYS[counts[1]], counts[i], counts[i + 1]) end
end
for _, member in ipairs(plan.mem) do
  if member[3] > 0 then redis.call('SADD', KEYS[member[1]], member[2])
  else redis.call('SREM', KEYS[member[1]], member[2]) end
end
for _, mark in ipairs(plan.item) do
  local key = KEYS[mark[1]]
  local ts = tonumber(mark[3])
  redis.call('ZADD', key, 'GT', ts, mark[2])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. (ts - tonumber(mark[4])))
  redis.call('PEXPIRE', key, mark[4])
end
for _, trace in ipairs(plan.trace) do
  local key = KEYS[trace[1]]
  if redis.call('LPUSH', key, trace[4]) > trace[2] then redis.call('LTRIM', key, 0, trace[2] - 1) end
  redis.call('PEXPIRE', key, trace[3])
end
for _, fields in ipairs(plan.hand) do redis.call('XADD', KEYS[plan.hk], '*', unpack(fields)) end
if plan.ak > 0 then
  -- One archive entry per batch, written with the batch: exactly once whatever crashes (cep.archive_stream).
  local fields = {'e', plan.ae}
  if plan.aa ~= '' then fields[#fields + 1] = 'a'; fields[#fields + 1] = plan.aa end
  if #not_written > 0 then fields[#fields + 1] = 'x'; fields[#fields + 1] = cmsgpack.pack(not_written) end
  if #cancelled > 0 then fields[#fields + 1] = 'c'; fields[#fields + 1] = cmsgpack.pack(cancelled) end
  redis.call('XADD', KEYS[plan.ak], '*', unpack(fields))
end
if plan.id then redis.call('HSET', KEYS[2], 'id', plan.id) end
if plan.n > 0 then redis.call('HINCRBY', KEYS[2], 'n', plan.n) end
return 1
"""

assert PROGRESS_ID == "id" and PROGRESS_COUNT == "n"  # the script spells both


class FencedError(Exception):
    """The partition's lease epoch moved: this process no longer owns the partition."""


class StalePositionError(Exception):
    """The stored position is not the one the batch was read after: drop the cache and re-read."""


@dataclass(slots=True)
class CommitPlan:
    """What one batch of one partition writes; built by the owner, applied by `commit`."""

    partition: int
    now_ms: int
    retention_ms: int
    keys: list[str] = field(default_factory=list)
    puts: list[Any] = field(default_factory=list)
    deletes: list[int] = field(default_factory=list)
    actions: list[list[Any]] = field(default_factory=list)
    releases: list[list[Any]] = field(default_factory=list)
    timers_added: list[Any] = field(default_factory=list)
    timers_removed: list[str] = field(default_factory=list)
    quarantined: list[list[bytes]] = field(default_factory=list)
    counts: list[list[Any]] = field(default_factory=list)
    members: list[list[Any]] = field(default_factory=list)  # [members ki, user, +1 | -1] in order
    items: list[list[Any]] = field(default_factory=list)  # [item ki, user, ts, window ms]
    sizes: dict[str, int] = field(default_factory=dict)  # segment -> change of its size in this partition
    _sizes_index: int = 0
    traces: list[list[Any]] = field(default_factory=list)
    handoffs: list[list[bytes]] = field(default_factory=list)  # XADD field lists for the handoff stream
    _handoff_index: int = 0
    _archive_index: int = 0
    archived_events: bytes = b""  # the batch's archive records (cep.archive_stream), when archiving
    archived_actions: bytes = b""
    read_after: bytes = b"0-0"  # the position the batch was read after (checked by the commit)
    last_id: bytes | None = None
    entries: int = 0
    _index: dict[str, int] = field(default_factory=dict)
    _action_groups: dict[str, list[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        p = self.partition
        for key in (epoch_key(p), progress_key(p), timers_key(p), outbox_key(p), recent_key(p), quarantine_key(p)):
            self._key(key)

    def _key(self, key: str) -> int:
        index = self._index.get(key)
        if index is None:
            self.keys.append(key)
            index = self._index[key] = len(self.keys)
        return index

    def put_state(self, user_id: str, record: bytes, ttl_ms: int) -> None:
        """Store a user's packed record (ttl 0: no expiry)."""
        self.puts.extend((self._key(user_key(self.partition, user_id, STATE)), record, ttl_ms))

    def put_link(self, key: str, record: str) -> None:
        """A tracked link's record (`cep.links`), kept as long as the ledger keeps its action."""
        self.puts.extend((self._key(key), record, self.retention_ms))

    def delete_state(self, user_id: str) -> None:
        """A user's record holds nothing any more."""
        self.deletes.append(self._key(user_key(self.partition, user_id, STATE)))

    def add_action(self, user_id: str, action_id: str, text: str, status: str, *, queue: bool) -> None:
        """A new ledger entry (written once: an id already there is left alone), appended to the outbox
        when `queue`. Grouped by user: the script writes each user's new entries with one command per key."""
        status_text = f'{{"status":"{status}","updated_at":{self.now_ms},"attempts":0}}'
        group = self._action_groups.get(user_id)
        if group is None:
            group = [*self._ledger(user_id, LEDGER, LEDGER_INDEX, LEDGER_STATUS), user_id]
            self._action_groups[user_id] = group
            self.actions.append(group)
        group.append([action_id, text, status_text, queue])

    def release(self, user_id: str, action_id: str, *, cancel: bool) -> None:
        """A delayed action fell due: to the outbox if still scheduled (or cancelled)."""
        self.releases.append([*self._ledger(user_id, LEDGER, LEDGER_STATUS), action_id, cancel, user_id])

    def count(self, journey_id: str, deltas: list[tuple[str, int]]) -> None:
        """Add to a journey's statistics in this partition."""
        group: list[Any] = [self._key(stats_key(self.partition, journey_id))]
        for name, delta in deltas:
            group.extend((name, delta))
        self.counts.append(group)

    def segment_member(self, segment_id: str, user_id: str, *, added: bool) -> None:
        """A user joined or left a segment: its member SET and size in this partition."""
        self.members.append([self._key(members_key(self.partition, segment_id)), user_id, 1 if added else -1])
        if not self._sizes_index:
            self._sizes_index = self._key(sizes_key(self.partition))
        self.sizes[segment_id] = self.sizes.get(segment_id, 0) + (1 if added else -1)

    def item_mark(self, mark: ItemMark) -> None:
        """A user did an indexed event on an item: into the item index, for the index's window."""
        key = item_key(self.partition, mark.attr, mark.event_type, mark.value)
        self.items.append([self._key(key), mark.user_id, mark.ts, mark.window_ms])

    def trace(self, user_id: str, batch: bytes, depth: int, ttl_ms: int) -> None:
        """Push a user's trace entries of this batch (one element), keeping the newest `depth` elements."""
        self.traces.append([self._key(user_key(self.partition, user_id, TRACE)), depth, ttl_ms, batch])

    def hand_off(self, handoff: Handoff) -> None:
        """An entry for another user's partition (a merged state, or items for a merged user), into this
        partition's handoff stream in the same atomic call; the owner's relay moves it on (`cep.handoff`)."""
        if not self._handoff_index:
            self._handoff_index = self._key(handoff_key(self.partition))
        self.handoffs.append(handoff_fields(handoff))

    def archive(self, events: bytes, actions: bytes) -> None:
        """Append the batch's archive records (`cep.archive_stream`) to the partition's archive stream."""
        if not self._archive_index:
            self._archive_index = self._key(archive_key(self.partition))
        self.archived_events, self.archived_actions = events, actions

    def quarantine(self, fields: dict[bytes, bytes]) -> None:
        """Move an entry that fails on its own out of the way, in the same commit that skips it."""
        self.quarantined.append([item for pair in fields.items() for item in pair])

    def _ledger(self, user_id: str, *families: str) -> list[int]:
        return [self._key(user_key(self.partition, user_id, family)) for family in families]

    def _all_counts(self) -> list[list[Any]]:
        """Journey statistics and segment sizes: both HINCRBY groups."""
        sizes = [name_delta for item in self.sizes.items() if item[1] for name_delta in item]
        return [*self.counts, [self._sizes_index, *sizes]] if sizes else self.counts

    def call(self, epoch: int) -> ScriptCall:
        """The script call for this plan."""
        plan: dict[str, Any] = {
            "now": self.now_ms,
            "retention": self.retention_ms,
            "recent_max": RECENT_MAXLEN,
            "quarantine_max": QUARANTINE_MAXLEN,
            "from": self.read_after,
            "n": self.entries,
            "put": self.puts,
            "del": self.deletes,
            "acts": self.actions,
            "rel": self.releases,
            "tadd": self.timers_added,
            "trem": self.timers_removed,
            "quar": self.quarantined,
            "cnt": self._all_counts(),
            "mem": self.members,
            "item": self.items,
            "trace": self.traces,
            "hk": self._handoff_index,
            "hand": self.handoffs,
            "ak": self._archive_index,
            "ae": self.archived_events,
            "aa": self.archived_actions,
        }
        if self.last_id is not None:
            plan["id"] = self.last_id
        # msgpack str (not bin) for bytes: cmsgpack hands both to Lua as strings, and old servers know str only.
        return ScriptCall(COMMIT_SCRIPT, self.keys, [epoch, msgpack.packb(plan, use_bin_type=False)])


async def commit(redis: Redis, plan: CommitPlan, epoch: int) -> None:
    """Apply the plan atomically; FencedError when the partition's epoch is no longer `epoch`."""
    try:
        await run_scripts(redis, [plan.call(epoch)])
    except ResponseError as exc:
        if str(exc).startswith(FENCED):
            raise FencedError(str(exc)) from exc
        if str(exc).startswith(STALE):
            raise StalePositionError(str(exc)) from exc
        raise
