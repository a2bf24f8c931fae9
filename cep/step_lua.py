"""The per-user step script: one atomic call per user per batch over all of that user's pattern state.

Owned together with the key families in `cep.user_state`, which is the only module that names them.
"""

from __future__ import annotations

# KEYS[1] seen  ZSET event_id -> processing time; dedupe, trimmed past the horizon
# KEYS[2] res   HASH event_id -> JSON reply of the event's first processing (replayed for duplicates)
# KEYS[3] fired HASH rule key -> trigger ts of the rule's last admitted firing (re-entry)
# KEYS[4] acts  HASH action_id -> JSON action record, immutable once written
# KEYS[5] actx  ZSET action_id -> created_at (ledger index, trimmed past retention)
# KEYS[6] astat HASH action_id -> JSON status {status, updated_at, attempts, ...}; kept apart from the
#                record because cjson re-encodes numbers with 14 digits and would corrupt params
# KEYS[7] tags  SET of the user's tags
# KEYS[8] first HASH rule key -> ts of the rule's first matching event (kept for ever)
# KEYS[9] wm    HASH rule key -> highest event ts the rule has seen (its watermark)
# KEYS[10] pidx HASH pattern state key -> rule key: what GET /v1/users/{id} lists as live rule state
# KEYS[11..] pattern state keys, addressed by index from the ops
# ARGV[1] msgpack plan {now, horizon, retention, fired_ttl, events: [{id, ts, ops: [op...]}]} (msgpack, not
#         JSON: records travel as raw strings instead of escaped text, and nil is nil, not a truthy null)
#   op kinds:
#     single {f}                      fire now
#     first  {rk, f}                  fire if this is the rule's first matching event
#     seq    {rk, late, w, ka, kb, ra, rb, ttl, f}   A-then-B; ka/kb hold A and B (ts-scored ids)
#     abs    {rk, late, w, kp, kb, ra, rb, ttl, timer}  kp: pending As; timer: [due, member]
#     due    {kp, a, f}               an absence deadline: fire if A is still pending
#     thr    {rk, late, w, kt, n | x, v, ttl, f}   count n / sum x of members "id|v" in [t - w, t]
#     act    {id, cancel}             a delayed action is due: release it to the outbox (or cancel)
#   f (absent when the rule's `if` failed): {rk, policy, period, acts: [{id, rec, st, add, remove, timer}]}
# Returns one msgpack map per plan event:
#   {dup, acts: [rec], queue: [rec], timers: [[due, member]], added, removed, fired: [rk], late: [rk]}
STEP_SCRIPT = r"""
local plan = cmsgpack.unpack(ARGV[1])
local now = tonumber(plan.now)
local wrote_fired = false
local shared_ttl = 0  -- the longest TTL among this call's pattern ops: wm and pidx serve them all

local function trim(zkey, hkey, older_than)
  local old = redis.call('ZRANGEBYSCORE', zkey, '-inf', older_than, 'LIMIT', 0, 256)
  if #old > 0 then
    redis.call('ZREM', zkey, unpack(old))
    redis.call('HDEL', hkey, unpack(old))
  end
  return old
end
trim(KEYS[1], KEYS[2], now - plan.horizon)
local stale = trim(KEYS[5], KEYS[4], now - plan.retention)
if #stale > 0 then redis.call('HDEL', KEYS[6], unpack(stale)) end

-- Score bounds are built with %.0f: Lua's `..` formats numbers with 14 digits and would round ms times.
local function below(score)
  return string.format('(%.0f', score)
end

local function extend(key, ttl)
  local current = redis.call('PTTL', key)
  if current == -1 or current < ttl then redis.call('PEXPIRE', key, ttl) end
end

-- The rule's watermark decides lateness: an event older than watermark - lateness cannot change the
-- rule any more (its state was pruned on that promise), so it is reported, not applied.
local function on_time(op, ts, reply)
  local raw = redis.call('HGET', KEYS[9], op.rk)
  local wm = raw and tonumber(raw) or ts
  if ts < wm - op.late then
    reply.late[#reply.late + 1] = op.rk
    return nil
  end
  if not raw or ts > wm then
    redis.call('HSET', KEYS[9], op.rk, ts)
    wm = ts
  end
  if op.ttl > shared_ttl then shared_ttl = op.ttl end
  return wm
end

-- A pattern key serves one rule, whose TTL is always the same: a plain PEXPIRE extends it.
local function touch(op, ...)
  for _, key in ipairs({...}) do
    redis.call('PEXPIRE', key, op.ttl)
    redis.call('HSET', KEYS[10], key, op.rk)
  end
end

local function others(key, low, high, self_id)
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', key, low, high, 'LIMIT', 0, 2)) do
    if member ~= self_id then return true end
  end
  return false
end

local function admit(f, ts, reply)
  local last = redis.call('HGET', KEYS[3], f.rk)
  if f.policy == 'once' and last then return end
  if f.policy == 'once_per' and last and ts < tonumber(last) + f.period then return end
  if f.policy ~= 'always' then
    redis.call('HSET', KEYS[3], f.rk, ts)
    wrote_fired = true
  end
  reply.fired[#reply.fired + 1] = f.rk
  for _, act in ipairs(f.acts) do
    if redis.call('HSETNX', KEYS[4], act.id, act.rec) == 1 then
      redis.call('ZADD', KEYS[5], now, act.id)
      redis.call('HSET', KEYS[6], act.id, cjson.encode({status = act.st, updated_at = now, attempts = 0}))
    end
    reply.acts[#reply.acts + 1] = act.rec
    if act.st == 'pending' then reply.queue[#reply.queue + 1] = act.rec end
    if act.timer then reply.timers[#reply.timers + 1] = act.timer end
    for _, tag in ipairs(act.add) do
      if redis.call('SADD', KEYS[7], tag) == 1 then reply.added[#reply.added + 1] = tag end
    end
    for _, tag in ipairs(act.remove) do
      if redis.call('SREM', KEYS[7], tag) == 1 then reply.removed[#reply.removed + 1] = tag end
    end
  end
end

local handlers = {}

function handlers.single(op, ev, reply)
  if op.f then admit(op.f, ev.ts, reply) end
end

function handlers.first(op, ev, reply)
  if redis.call('HSETNX', KEYS[8], op.rk, ev.ts) == 1 and op.f then admit(op.f, ev.ts, reply) end
end

function handlers.seq(op, ev, reply)
  local wm = on_time(op, ev.ts, reply)
  if not wm then return end
  local ka, kb, done = KEYS[op.ka], KEYS[op.kb], false
  if op.rb then
    done = #redis.call('ZRANGEBYSCORE', ka, ev.ts - op.w, ev.ts, 'LIMIT', 0, 1) > 0
    redis.call('ZADD', kb, ev.ts, ev.id)
  end
  if op.ra then
    done = done or others(kb, ev.ts, ev.ts + op.w, ev.id)
    redis.call('ZADD', ka, ev.ts, ev.id)
  end
  -- Any future on-time event has ts >= cutoff: an A can still pair while ts_A + w >= cutoff,
  -- a B (for an out-of-order A) while ts_B >= cutoff.
  local cutoff = wm - op.late
  redis.call('ZREMRANGEBYSCORE', ka, '-inf', below(cutoff - op.w))
  redis.call('ZREMRANGEBYSCORE', kb, '-inf', below(cutoff))
  touch(op, ka, kb)
  if done and op.f then admit(op.f, ev.ts, reply) end
end

function handlers.abs(op, ev, reply)
  local wm = on_time(op, ev.ts, reply)
  if not wm then return end
  local kp, kb = KEYS[op.kp], KEYS[op.kb]
  if op.rb then
    local cancelled = redis.call('ZRANGEBYSCORE', kp, ev.ts - op.w, ev.ts)
    if #cancelled > 0 then redis.call('ZREM', kp, unpack(cancelled)) end
    redis.call('ZADD', kb, ev.ts, ev.id)
  end
  if op.ra and not others(kb, ev.ts, ev.ts + op.w, ev.id) then
    redis.call('ZADD', kp, ev.ts, ev.id)
    reply.timers[#reply.timers + 1] = op.timer
  end
  redis.call('ZREMRANGEBYSCORE', kb, '-inf', below(wm - op.late))
  touch(op, kp, kb)
end

function handlers.due(op, ev, reply)
  if redis.call('ZREM', KEYS[op.kp], op.a) == 1 and op.f then admit(op.f, ev.ts, reply) end
end

function handlers.thr(op, ev, reply)
  local wm = on_time(op, ev.ts, reply)
  if not wm then return end
  local kt, target = KEYS[op.kt], op.n or op.x
  redis.call('ZADD', kt, ev.ts, ev.id .. '|' .. op.v)
  -- Windows [t - w, t] that end at a stored event and hold this one: t in [ts, ts + w].
  local done = false
  local ends = redis.call('ZRANGEBYSCORE', kt, ev.ts, ev.ts + op.w, 'WITHSCORES')
  for i = 2, #ends, 2 do
    local t = tonumber(ends[i])
    local members = redis.call('ZRANGEBYSCORE', kt, t - op.w, t)
    local total = 0
    if op.n then
      total = #members
    else
      for _, member in ipairs(members) do total = total + tonumber(string.match(member, '|([^|]*)$')) end
    end
    if total >= target then
      done = true
      break
    end
  end
  local cutoff = wm - op.late
  redis.call('ZREMRANGEBYSCORE', kt, '-inf', below(cutoff - op.w))
  if op.n then
    -- Below the cutoff only the n - 1 newest can still share a window with an on-time event.
    local older = redis.call('ZCOUNT', kt, '-inf', below(cutoff))
    if older > op.n - 1 then redis.call('ZREMRANGEBYRANK', kt, 0, older - op.n) end
  end
  touch(op, kt)
  if done and op.f then admit(op.f, ev.ts, reply) end
end

function handlers.act(op, ev, reply)
  local raw = redis.call('HGET', KEYS[6], op.id)
  if not raw then return end
  local status = cjson.decode(raw)
  if status.status ~= 'scheduled' then return end
  status.updated_at = now
  if op.cancel then
    status.status = 'cancelled'
    status.reason = 'ruleset_deleted'
  else
    status.status = 'pending'
    reply.queue[#reply.queue + 1] = redis.call('HGET', KEYS[4], op.id)
  end
  redis.call('HSET', KEYS[6], op.id, cjson.encode(status))
end

local replies = {}
for i, ev in ipairs(plan.events) do
  if redis.call('ZSCORE', KEYS[1], ev.id) then
    local prior = redis.call('HGET', KEYS[2], ev.id)
    if prior then
      local reply = cmsgpack.unpack(prior)
      reply.dup = true
      replies[i] = cmsgpack.pack(reply)
    else
      replies[i] = cmsgpack.pack({dup = true})
    end
  else
    redis.call('ZADD', KEYS[1], now, ev.id)
    local reply = {acts = {}, queue = {}, timers = {}, added = {}, removed = {}, fired = {}, late = {}}
    for _, op in ipairs(ev.ops) do handlers[op.k](op, ev, reply) end
    local text = cmsgpack.pack(reply)
    if #reply.acts + #reply.queue + #reply.timers + #reply.added + #reply.removed > 0 then
      redis.call('HSET', KEYS[2], ev.id, text)
    end
    replies[i] = text
  end
end
if shared_ttl > 0 then
  extend(KEYS[9], shared_ttl)
  extend(KEYS[10], shared_ttl)
end
redis.call('PEXPIRE', KEYS[1], plan.horizon)
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], plan.horizon) end
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('PEXPIRE', KEYS[4], plan.retention)
  redis.call('PEXPIRE', KEYS[5], plan.retention)
  redis.call('PEXPIRE', KEYS[6], plan.retention)
end
if wrote_fired then
  if tonumber(plan.fired_ttl) > 0 then extend(KEYS[3], plan.fired_ttl) else redis.call('PERSIST', KEYS[3]) end
end
return replies
"""
