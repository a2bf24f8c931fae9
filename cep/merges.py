"""Identity merges at the partition owners: the two steps of a merge, and forwarding what arrives for a
merged user.

A merge of user S into user T crosses partitions, and a commit may write only its own partition's slot, so
it runs as two steps through the streams, each atomic with its partition's commit:

1. `MergeOut(S -> T)` in S's stream (appended by `POST /v1/identities`): S's owner releases what S holds in
   its partition (timers, segment memberships, waiting counts: `cep.merge_rules.release_source`), turns S's
   record into a tombstone naming T, and hands S's packed state on as a `MergeIn` — all in one commit.
2. The owner's relay (`cep.handoff`) appends the `MergeIn` to T's stream; T's owner merges the state into
   T's record (`cep.merge_rules.merge_state`) in its commit, once: the merge id is remembered with T's
   dedupe ids, so a `MergeIn` relayed twice changes nothing the second time.

Events and patches that reach S after step 1 (a producer still sending S's id, an alias not yet re-pointed)
are handed to T the same way, in order, behind S's state. A `MergeIn` that finds its target merged away
too follows the target's tombstone; merges form a forest (`cep.identities`), so every chain ends.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from cep.evaluator import Effects, Evaluator
from cep.events import Event, ProfilePatch, encode_batch, encode_patch
from cep.merge_items import Handoff, MergeIn, MergeOut, encode_merge, merge_id
from cep.merge_rules import merge_state, release_source
from cep.streams import BATCH_FIELD, MERGE_FIELD, PATCH_FIELD
from cep.user_record import UserState, decode_user_state, encode_user_state, event_id_hash

log = logging.getLogger("beacon.identities")

# Effects.identities counters (beacon_identity_merge_steps_total{step} and beacon_identity_forwarded_total{kind})
MERGED_OUT = "out"
MERGED_IN = "in"
MERGE_DUPLICATE = "duplicate"
MERGE_REPEATED = "repeated"


def on_merge_out(evaluator: Evaluator, state: UserState, item: MergeOut, now_ms: int, effects: Effects) -> UserState:
    """Step 1 at the source's owner: returns the source's new state (a tombstone naming the target)."""
    source = item.user_id
    if state.merged_into or item.target == source:
        if state.merged_into != item.target:
            log.warning("user %s: merge into %s ignored (merged into %r)", source, item.target, state.merged_into)
        _tally(effects, MERGE_REPEATED)  # a request retried after a crash re-sends its merges
        return state
    release_source(state, evaluator.index, source, effects)
    handed = MergeIn(item.target, source, encode_user_state(state))
    effects.handoffs.append(Handoff(item.target, MERGE_FIELD, encode_merge(handed), 1))
    if effects.trace is not None:
        effects.trace.append((source, {"kind": "identity", "ts": now_ms, "what": "merged_into", "into": item.target}))
    _tally(effects, MERGED_OUT)
    return UserState(merged_into=item.target, merged_at=now_ms)


def on_merge_in(evaluator: Evaluator, state: UserState, item: MergeIn, now_ms: int, effects: Effects) -> None:
    """Step 2 at the target's owner: merge the source's state into the target's (at most once)."""
    if state.merged_into:
        forwarded = replace(item, user_id=state.merged_into)
        effects.handoffs.append(Handoff(state.merged_into, MERGE_FIELD, encode_merge(forwarded), 1))
        _tally(effects, "forwarded:merge")
        return
    digest = event_id_hash(merge_id(item.source))
    if digest in state.seen:
        _tally(effects, MERGE_DUPLICATE)
        return
    state.remember(digest, now_ms)
    source = decode_user_state(item.record)
    found = merge_state(state, source, item.source, evaluator.index, item.user_id, effects)
    if effects.trace is not None:
        entry = {"kind": "identity", "ts": now_ms, "what": "merged", "from": item.source, **found}
        effects.trace.append((item.user_id, entry))
    evaluator.on_merged(state, item.user_id, merge_id(item.source), now_ms, effects)
    _tally(effects, MERGED_IN)


def forward(items: list[Event | ProfilePatch], to: str, effects: Effects) -> None:
    """Items that reached a merged user, handed to the user it was merged into (renamed to that user)."""
    events = [replace(item, user_id=to) for item in items if isinstance(item, Event)]
    if events:
        effects.handoffs.append(Handoff(to, BATCH_FIELD, encode_batch(events), len(events)))
        _tally(effects, "forwarded:event", len(events))
        for event in events:
            effects.forwarded_events[event.origin] = effects.forwarded_events.get(event.origin, 0) + 1
    for item in items:
        if isinstance(item, ProfilePatch):
            effects.handoffs.append(Handoff(to, PATCH_FIELD, encode_patch(replace(item, user_id=to)), 1))
            _tally(effects, "forwarded:patch")


def _tally(effects: Effects, what: str, count: int = 1) -> None:
    effects.identities[what] = effects.identities.get(what, 0) + count
