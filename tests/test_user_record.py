"""The packed user record: round trips, the kept-packed dedupe ids, and reading version-1 records."""

from __future__ import annotations

import msgpack
import pytest

from beacon.errors import DecodeError
from cep.evaluator import Effects, Evaluator
from cep.events import Event
from cep.rule_index import RuleIndex
from cep.user_record import PatternState, UserState, decode_user_state, encode_user_state, event_id_hash
from rules.compiled import CompiledRuleset
from rules.registry import compile_ruleset

DAY_MS = 86_400_000
NOW = 1_800_000_000_000


def _state() -> UserState:
    state = UserState(profile={"level": 3}, tags={"vip"}, last_seen=NOW - 5)
    state.fired["r1"] = [NOW - 10, NOW + DAY_MS]
    state.first["r2"] = NOW - 20
    state.patterns["s1"] = PatternState(
        NOW,
        NOW + DAY_MS,
        {"a": {"ssku-1": [NOW - 300, NOW - 200]}, "p": {"_": [[NOW - 100, "e1", {"sku": 1}]]}},
    )
    return state


def test_round_trip_keeps_everything() -> None:
    state = _state()
    for index in range(5):
        state.remember(event_id_hash(f"e{index}"), NOW + index * 1000)
    again = decode_user_state(encode_user_state(state))
    assert again.profile == state.profile and again.tags == state.tags and again.last_seen == state.last_seen
    assert again.fired == state.fired and again.first == state.first
    assert again.patterns == state.patterns
    assert again.seen == {event_id_hash(f"e{i}"): (NOW + i * 1000) // 1000 for i in range(5)}


def test_ids_remembered_after_decoding_are_encoded_too() -> None:
    state = decode_user_state(encode_user_state(_state()))
    state.remember(event_id_hash("a"), NOW)
    state = decode_user_state(encode_user_state(state))
    state.remember(event_id_hash("b"), NOW + 1000)
    assert set(decode_user_state(encode_user_state(state)).seen) == {event_id_hash("a"), event_id_hash("b")}


def test_prune_drops_old_ids_from_the_packed_form() -> None:
    state = UserState()
    state.remember(event_id_hash("old"), NOW - 8 * DAY_MS)
    state.remember(event_id_hash("new"), NOW)
    encode_user_state(state)  # packs both
    assert state.prune(NOW, 7 * DAY_MS) == 7 * DAY_MS  # the newest id's horizon
    assert set(decode_user_state(encode_user_state(state)).seen) == {event_id_hash("new")}


def test_version_1_records_store_pattern_times_below_the_watermark() -> None:
    stored = {
        "v": 1,
        "g": ["vip"],
        "x": {"s1": [NOW, NOW + DAY_MS, {"a": {"_": [300, 200]}, "t": {"_": [[50, 9.5]]}}]},
    }
    state = decode_user_state(msgpack.packb(stored, use_bin_type=True))
    assert state.tags == {"vip"}
    assert state.patterns["s1"].parts == {"a": {"_": [NOW - 300, NOW - 200]}, "t": {"_": [[NOW - 50, 9.5]]}}


@pytest.mark.parametrize(
    "raw",
    [msgpack.packb({"v": 99}), msgpack.packb({"v": 2, "s": b"\x00" * 5}), b"\xc1"],
    ids=["unknown version", "torn dedupe ids", "not msgpack"],
)
def test_unreadable_records_raise_decode_error(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_user_state(raw)


def test_a_pattern_the_evaluator_changes_is_encoded_afresh() -> None:
    """Unchanged patterns are stored from their decoded bytes; a changed one must not be."""
    document = {
        "id": "t",
        "rules": [
            {
                "id": "views",
                "when": {"threshold": {"match": {"event": "view"}, "count": 3, "window": "1h"}},
                "then": [{"action": "tag", "add": ["keen"]}],
            },
            {
                "id": "carts",
                "when": {"threshold": {"match": {"event": "cart"}, "count": 5, "window": "1h"}},
                "then": [{"action": "tag", "add": ["buyer"]}],
            },
        ],
    }
    index = RuleIndex([CompiledRuleset.build(compile_ruleset(document, ruleset_id="t", lateness_ms=0))])
    evaluator = Evaluator(index)
    state = UserState()

    def feed(kind: str, number: int) -> None:
        event = Event(f"{kind}{number}", "u", kind, NOW + number, {}, NOW + number)
        evaluator.on_event(state, event, NOW + number, Effects())

    feed("view", 1)
    feed("cart", 2)
    state = decode_user_state(encode_user_state(state))
    feed("view", 3)  # changes the `views` pattern only
    feed("view", 4)
    state = decode_user_state(encode_user_state(state))
    assert state.tags == {"keen"}
    counts = sorted(len(lists["_"]) for pattern in state.patterns.values() for lists in pattern.parts.values())
    assert counts == [1, 3]


def test_prune_drops_what_lapsed_and_says_how_long_the_rest_lives() -> None:
    state = UserState(last_seen=NOW)
    state.fired["lapsed"] = [NOW - DAY_MS, NOW - 1]
    state.fired["live"] = [NOW, NOW + 2 * DAY_MS]
    state.patterns["old"] = PatternState(NOW, NOW - 1, {"a": {"_": [NOW - DAY_MS]}})
    state.patterns["empty"] = PatternState(NOW, NOW + DAY_MS, {})
    state.patterns["live"] = PatternState(NOW, NOW + 5 * DAY_MS, {"a": {"_": [NOW]}})
    assert state.prune(NOW, 7 * DAY_MS) == 5 * DAY_MS
    assert set(state.fired) == {"live"} and set(state.patterns) == {"live"}
    state.first["r"] = NOW
    assert state.prune(NOW, 7 * DAY_MS) == 0  # a first-time mark is kept for ever
    assert UserState(last_seen=NOW).prune(NOW, 7 * DAY_MS) == 72 * 3_600_000


def test_segment_marks_round_trip_and_a_left_mark_lapses_after_the_dedupe_horizon() -> None:
    """A member (or a pending window timer) keeps the record; a "left at" mark only for the dedupe horizon."""
    day = 86_400_000
    state = UserState(segments={"member": [1_000, 0, 1], "timer": [-5, 9_000, 2], "left": [-(10 * day) - 1, 0, 3]})
    assert decode_user_state(encode_user_state(state)).segments == state.segments
    assert state.prune(10 * day, 7 * day) == 0  # kept for ever: a member and a timer
    assert set(state.segments) == {"member", "timer", "left"}
    left_only = UserState(segments={"left": [-(10 * day) - 1, 0, 3]})
    assert left_only.prune(12 * day, 7 * day) == 5 * day  # until the mark lapses
    assert left_only.prune(18 * day, 7 * day) and left_only.segments == {}
    assert left_only.is_empty()
