"""Journey validation: documents into journey_model dataclasses, every problem named by its JSON path."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from rules.journey_model import (
    Behaviour,
    Branch,
    BranchAll,
    BranchAny,
    BranchArm,
    BranchNot,
    Do,
    Exit,
    Goal,
    Journey,
    JourneyExit,
    JourneyReentry,
    Split,
    SplitArm,
    Wait,
    WaitArm,
    WaitFor,
)
from rules.journey_schema import JourneyInvalid, parse_journey
from rules.model import Action, AllOf, AnyOf, Compare, HasTag, Matcher, Not
from rules.schema import RulesetInvalid

JOURNEYS = Path(__file__).resolve().parents[2] / "rules" / "library" / "journeys"
DAY = 86_400_000
COUPON = {"action": "coupon", "coupon_id": "C1"}
END = {"exit": True}


def library(name: str) -> dict[str, Any]:
    return dict(json.loads((JOURNEYS / f"{name}.json").read_text()))


def doc_with(nodes: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A valid journey document; `nodes` replaces the two-node graph, `fields` override the rest."""
    doc: dict[str, Any] = {
        "id": "j",
        "entry": {"event": "follow"},
        "start": "a",
        "nodes": nodes if nodes is not None else {"a": {"do": [COUPON], "next": "end"}, "end": END},
    }
    doc.update(fields)
    return doc


def node_of(node: dict[str, Any], **fields: Any) -> Any:
    """The parsed node `a` of a journey whose every `next` may go to `end`."""
    return parse_journey(doc_with({"a": node, "end": END}, **fields)).nodes["a"]


def problems(doc: object, **kwargs: Any) -> list[tuple[str | None, str]]:
    """Every (path, message) the validator reports for `doc`."""
    with pytest.raises(RulesetInvalid) as caught:
        parse_journey(doc, **kwargs)
    return [(error.path, error.message) for error in caught.value.errors]


def problem(doc: object, **kwargs: Any) -> tuple[str | None, str]:
    """The single problem reported for `doc`."""
    found = problems(doc, **kwargs)
    assert len(found) == 1, found
    return found[0]


# -- the library ---------------------------------------------------------------------------------


def test_the_library_holds_the_four_seed_journeys_and_each_parses_under_its_file_name() -> None:
    names = sorted(path.stem for path in JOURNEYS.glob("*.json"))
    assert names == ["cart-recovery", "new-fan", "post-purchase", "store-visit"]
    for name in names:
        journey = parse_journey(library(name), journey_id=name)
        assert journey.id == name
        assert journey.description


def test_new_fan_node_by_node() -> None:
    message = {"channel": "wechat_cs", "template": "welcome"}
    expected = Journey(
        id="new-fan",
        description=library("new-fan")["description"],
        start="welcome",
        entry=Matcher("follow"),
        reentry=JourneyReentry("once"),
        exits=(JourneyExit(Matcher("unfollow")),),
        goal=Goal(Matcher("pay"), 7 * DAY),
        nodes={
            "welcome": Do((Action("message", message),), "wait-click"),
            "wait-click": WaitFor((WaitArm(Matcher("menu_click"), "interested"),), DAY, "article"),
            "interested": Do((Action("tag", {"add": ["interested"]}),), "day-later"),
            "day-later": Wait(duration_ms=DAY, next="ab"),
            "ab": Split((SplitArm(45, "promo-a"), SplitArm(45, "promo-b"), SplitArm(10, None, holdout=True))),
            "promo-a": Do((Action("coupon", {"coupon_id": "C-A"}),), "end"),
            "promo-b": Do((Action("coupon", {"coupon_id": "C-B"}),), "end"),
            "article": Do((Action("message", {"channel": "wechat_template", "template": "article"}),), "end"),
            "end": Exit(),
        },
    )
    journey = parse_journey(library("new-fan"))
    assert journey == expected
    assert list(journey.nodes) == list(expected.nodes)  # document order is kept
    assert (journey.key, journey.tz, journey.lateness_ms, journey.entry_segment, journey.version) == (
        (),
        "UTC",
        2_000,
        None,
        0,
    )


def test_cart_recovery_shape() -> None:
    journey = parse_journey(library("cart-recovery"))
    assert (journey.start, journey.key, journey.reentry) == ("wait-30m", ("sku",), JourneyReentry("once_per", DAY))
    assert (journey.exits, journey.goal) == ((JourneyExit(Matcher("pay")),), Goal(Matcher("pay"), 3 * DAY))
    assert journey.nodes["wait-30m"] == Wait(duration_ms=30 * 60_000, next="sms")
    sms = {"channel": "sms", "template": "cart_reminder", "params": {"sku": "{{event.sku}}"}}
    assert journey.nodes["sms"] == Do((Action("message", sms),), "wait-1d")
    assert journey.nodes["wait-2d"] == Wait(duration_ms=2 * DAY, next="last-call")
    assert list(journey.nodes) == ["wait-30m", "sms", "wait-1d", "coupon", "wait-2d", "last-call", "end"]


def test_post_purchase_shape() -> None:
    journey = parse_journey(library("post-purchase"))
    assert (journey.key, journey.reentry, journey.goal) == (
        ("order_id",),
        JourneyReentry("always"),
        Goal(Matcher("pay"), 40 * DAY),
    )
    assert journey.nodes["wait-delivery"] == WaitFor(
        (WaitArm(Matcher("delivered"), "delivered-note", ("order_id",)),), 7 * DAY, "late-delivery"
    )
    assert journey.nodes["wait-sign"] == WaitFor(
        (WaitArm(Matcher("signed"), "review", ("order_id",)),), 3 * DAY, "review"
    )
    assert journey.nodes["late-delivery"] == Do((Action("notify_staff", {"template": "delivery_overdue"}),), "end")
    assert journey.nodes["wait-30d"] == Wait(duration_ms=30 * DAY, next="repurchase")


def test_store_visit_shape() -> None:
    journey = parse_journey(library("store-visit"))
    assert (journey.reentry, journey.exits, journey.goal) == (JourneyReentry("once_per", 7 * DAY), (), None)
    assert journey.nodes["wait-pay"] == WaitFor((WaitArm(Matcher("pay"), "end"),), 4 * 3_600_000, "next-morning")
    assert journey.nodes["next-morning"] == Wait(until=(10, 0), tz="Asia/Shanghai", next="vip?")
    assert journey.nodes["vip?"] == Branch((BranchArm(HasTag("vip"), "guide-call"),), "guide-message")
    call = {"template": "guide_follow_up", "notify_superior": False}
    assert journey.nodes["guide-call"] == Do((Action("notify_staff", call),), "end")


# -- valid documents -----------------------------------------------------------------------------


def test_journey_fields_and_defaults() -> None:
    journey = parse_journey(
        doc_with(
            description="d",
            key=["campaign", "sku"],
            tz="Asia/Shanghai",
            lateness="5s",
            goal={"event": "pay", "where": {"field": "amount", "op": ">", "value": 0}, "within": "1h"},
            exit=[{"event": "unfollow"}, {"event": "block"}],
        )
    )
    assert (journey.description, journey.key, journey.tz, journey.lateness_ms) == (
        "d",
        ("campaign", "sku"),
        "Asia/Shanghai",
        5_000,
    )
    assert journey.goal == Goal(Matcher("pay", Compare("field", "amount", ">", 0)), 3_600_000)
    assert journey.exits == (JourneyExit(Matcher("unfollow")), JourneyExit(Matcher("block")))
    assert journey.reentry == JourneyReentry("always")
    assert parse_journey(doc_with(), default_lateness_ms=7_000).lateness_ms == 7_000
    assert parse_journey(doc_with(lateness="0s")).lateness_ms == 0


def test_id_from_the_url() -> None:
    doc = doc_with()
    del doc["id"]
    assert parse_journey(doc, journey_id="from-url").id == "from-url"
    assert parse_journey(doc_with(), journey_id="j").id == "j"


@pytest.mark.parametrize(
    ("reentry", "expected"),
    [
        ({"policy": "once"}, JourneyReentry("once")),
        ({"policy": "once_per", "period": "1d"}, JourneyReentry("once_per", period_ms=DAY)),
        ({"policy": "always"}, JourneyReentry("always")),
        ({"max": 3}, JourneyReentry("max", max_entries=3)),
        ({"max": 10_000}, JourneyReentry("max", max_entries=10_000)),
    ],
)
def test_reentry_forms(reentry: dict[str, Any], expected: JourneyReentry) -> None:
    assert parse_journey(doc_with(reentry=reentry)).reentry == expected


def test_wait_nodes_take_the_node_tz_else_the_journey_tz() -> None:
    assert node_of({"until": "09:30", "next": "end"}) == Wait(until=(9, 30), tz="UTC", next="end")
    assert node_of({"until": "23:59", "next": "end"}, tz="Europe/Paris") == Wait(
        until=(23, 59), tz="Europe/Paris", next="end"
    )
    assert node_of({"until": "0:05", "tz": "Asia/Tokyo", "next": "end"}, tz="Europe/Paris") == Wait(
        until=(0, 5), tz="Asia/Tokyo", next="end"
    )
    assert node_of({"until_profile": "birthday", "next": "end"}, tz="Asia/Shanghai") == Wait(
        until_profile="birthday", tz="Asia/Shanghai", next="end"
    )
    assert node_of({"wait": "1h30m", "label": "pause", "next": "end"}) == Wait(duration_ms=5_400_000, next="end")


def test_wait_for_with_several_arms() -> None:
    node = {
        "wait_for": [
            {"event": "click", "where": {"field": "menu", "op": "==", "value": "shop"}, "next": "end"},
            {"event": "pay", "correlate": ["sku", "shop"]},
        ],
        "timeout": "2h",
    }
    assert node_of(node) == WaitFor(
        (
            WaitArm(Matcher("click", Compare("field", "menu", "==", "shop")), "end"),
            WaitArm(Matcher("pay"), None, ("sku", "shop")),
        ),
        7_200_000,
        None,
    )


def test_split_arms_and_salt() -> None:
    node = {
        "split": [{"weight": 33.3, "next": "end"}, {"weight": 33.3}, {"weight": 33.4, "holdout": True}],
        "salt": "s",
    }
    assert node_of(node) == Split((SplitArm(33.3, "end"), SplitArm(33.3, None), SplitArm(33.4, None, True)), "s")


# -- branch conditions ---------------------------------------------------------------------------


def branch_condition(condition: dict[str, Any]) -> Any:
    node = node_of({"branch": [{"if": condition, "next": "end"}], "else": "end"})
    assert isinstance(node, Branch)
    assert node.otherwise == "end"
    return node.arms[0].condition


def test_plain_predicates_stay_rule_predicates() -> None:
    condition = {"all": [{"tag": "vip"}, {"not": {"profile": "level", "op": "<", "value": 3}}, {"any": []}]}
    assert branch_condition(condition) == AllOf((HasTag("vip"), Not(Compare("profile", "level", "<", 3)), AnyOf(())))
    assert branch_condition({"field": "campaign", "op": "==", "value": "x"}) == Compare("field", "campaign", "==", "x")


def test_behaviour_conditions() -> None:
    view = {"event": "view", "where": {"field": "sku", "op": "prefix", "value": "A-"}}
    view_matcher = Matcher("view", Compare("field", "sku", "prefix", "A-"))
    assert branch_condition({"did": view, "within": "30d"}) == Behaviour("did", view_matcher, 30 * DAY, ">=", 1)
    assert branch_condition({"did": {"event": "pay"}, "within": "1d", "count": {"op": "==", "value": 0}}) == (
        Behaviour("did", Matcher("pay"), DAY, "==", 0)
    )
    assert branch_condition({"did_not": {"event": "pay"}, "within": "30d"}) == Behaviour(
        "did_not", Matcher("pay"), 30 * DAY
    )
    summed = {"sum": "amount", "of": {"event": "pay"}, "within": "90d", "op": ">=", "value": 1000.5}
    assert branch_condition(summed) == Behaviour("sum", Matcher("pay"), 90 * DAY, ">=", 1000.5, "amount")


def test_combinators_over_behaviour_become_branch_combinators() -> None:
    did = {"did": {"event": "pay"}, "within": "7d"}
    paid = Behaviour("did", Matcher("pay"), 7 * DAY)
    assert branch_condition({"all": [{"tag": "vip"}, did]}) == BranchAll((HasTag("vip"), paid))
    assert branch_condition({"any": [did]}) == BranchAny((paid,))
    assert branch_condition({"not": did}) == BranchNot(paid)
    # Only the combinators with a behaviour below them change; a plain subtree stays a predicate.
    nested = {"any": [{"all": [{"tag": "a"}, {"tag": "b"}]}, {"not": {"all": [did]}}]}
    assert branch_condition(nested) == BranchAny((AllOf((HasTag("a"), HasTag("b"))), BranchNot(BranchAll((paid,)))))


def test_condition_errors() -> None:
    def at(condition: object) -> tuple[str | None, str]:
        return problem(doc_with({"a": {"branch": [{"if": condition, "next": "end"}]}, "end": END}))

    where = "nodes.a.branch[0].if"
    pay = {"event": "pay"}
    assert at({"did": pay, "within": "1d", "count": {"op": "in", "value": 2}}) == (
        f"{where}.count.op",
        '"in" is not an operator (expected one of: ==, !=, >, >=, <, <=)',
    )
    assert at({"did": pay, "within": "1d", "count": {"op": ">", "value": 10_001}}) == (
        f"{where}.count.value",
        "must be an integer from 0 to 10000",
    )
    assert at({"did": pay, "within": "1d", "count": {"op": ">"}}) == (f"{where}.count.value", "is required")
    assert at({"did": pay}) == (f"{where}.within", "is required")
    assert at({"did_not": pay, "within": "0s"}) == (f"{where}.within", "must be longer than 0")
    assert at({"did_not": pay, "within": "1d", "count": {"op": ">", "value": 1}}) == (
        f"{where}.count",
        'unknown field "count" (expected one of: did_not, within)',
    )
    summed = {"sum": "amount", "of": pay, "within": "1d", "op": "contains", "value": 1}
    assert at(summed) == (f"{where}.op", '"contains" is not an operator (expected one of: ==, !=, >, >=, <, <=)')
    assert at({**summed, "op": ">", "value": "lots"}) == (f"{where}.value", "must be a number")
    assert at({"did": {"event": "pay", "where": {"tag": "vip"}}, "within": "1d"}) == (
        f"{where}.did.where",
        'tag conditions belong in the rule\'s "if"',
    )
    assert at({"did": pay, "did_not": pay, "within": "1d"}) == (
        where,
        "takes exactly one of: field, profile, tag, all, any, not, did, did_not, sum (found: did, did_not)",
    )
    assert at({"all": [{"not": {"did": pay}}]}) == (f"{where}.all[0].not.within", "is required")
    deep: dict[str, Any] = {"tag": "vip"}
    for _ in range(16):
        deep = {"not": deep}
    assert at(deep) == (where + ".not" * 16, "nests deeper than 16 levels")


# -- document-level errors -----------------------------------------------------------------------


def test_non_object_document() -> None:
    assert problem([]) == (None, "must be an object")
    assert problem("new-fan") == (None, "must be an object")


def test_required_fields() -> None:
    assert problems({}) == [
        ("id", "is required"),
        ("entry", "is required"),
        ("start", "is required"),
        ("nodes", "is required"),
    ]
    assert problems({}, journey_id="j") == [
        ("entry", "is required"),
        ("start", "is required"),
        ("nodes", "is required"),
    ]


def test_id_mismatch_and_bad_ids() -> None:
    assert problem(doc_with(), journey_id="other") == ("id", '"j" does not match the id in the URL "other"')
    assert problem(doc_with(id="no spaces")) == (
        "id",
        '"no spaces" is not a valid id (1-64 letters, digits, "_", "." or "-"; starts with a letter or digit)',
    )


def test_unknown_fields_at_journey_and_node_level() -> None:
    assert problem(doc_with(triggers=[])) == (
        "triggers",
        'unknown field "triggers" (expected one of: id, description, entry, key, reentry, exit, goal, tz, lateness, '
        "fatigue, start, nodes)",
    )
    assert problem(doc_with({"a": {"do": [COUPON], "nxt": "end", "label": "hi"}, "end": END}, start="a")) == (
        "nodes.a.nxt",
        'unknown field "nxt" (expected one of: do, next, label)',
    )


def test_segment_entry_is_the_segments_entered_event() -> None:
    journey = parse_journey(doc_with(entry={"segment": "big-spenders"}))
    assert journey.entry == Matcher("segment_entered", Compare("field", "segment", "==", "big-spenders"))
    assert problem(doc_with(entry={"segment": "no way"})) == (
        "entry.segment",
        '"no way" is not a valid id (1-64 letters, digits, "_", "." or "-"; starts with a letter or digit)',
    )


def test_entry_and_exit_errors() -> None:
    assert problem(doc_with(entry={"event": "pay", "on": 1})) == (
        "entry.on",
        'unknown field "on" (expected one of: event, where)',
    )
    assert problem(doc_with(exit=[])) == ("exit", "must be a non-empty list")
    assert problem(doc_with(exit=[{"event": "x"}] * 21)) == ("exit", "must have at most 20 matchers")
    assert problem(doc_with(goal={"event": "pay"})) == ("goal.within", "is required")


def test_key_errors() -> None:
    assert problem(doc_with(key=["sku", "sku"])) == ("key[1]", 'duplicate "sku"')
    assert problem(doc_with(key=[f"k{index}" for index in range(9)])) == ("key", "must have at most 8 items")


def test_reentry_errors() -> None:
    assert problem(doc_with(reentry={"max": 0})) == ("reentry.max", "must be an integer from 1 to 10000")
    assert problem(doc_with(reentry={"max": 10_001})) == ("reentry.max", "must be an integer from 1 to 10000")
    assert problem(doc_with(reentry={"policy": "once_per"})) == ("reentry.period", 'is required with "once_per"')
    assert problem(doc_with(reentry={"policy": "sometimes"})) == (
        "reentry.policy",
        '"sometimes" is not a policy (expected one of: once, once_per, always)',
    )


def test_bad_time_zones() -> None:
    message = 'is not a time zone (an IANA name like "Asia/Shanghai")'
    assert problem(doc_with(tz="Mars/Olympus")) == ("tz", f'"Mars/Olympus" {message}')
    assert problem(doc_with(tz="localtime")) == ("tz", f'"localtime" {message}')
    assert problem(doc_with(tz="../../etc/passwd")) == ("tz", f'"../../etc/passwd" {message}')
    bad_node = doc_with({"a": {"until": "10:00", "tz": 8, "next": "end"}, "end": END})
    assert problem(bad_node) == ("nodes.a.tz", f"8 {message}")


def test_bad_durations_and_times() -> None:
    wait_for = {"wait_for": [{"event": "click", "next": "end"}], "timeout": "1x"}
    assert problem(doc_with({"a": wait_for, "end": END})) == ("nodes.a.timeout", '"1x" is not a duration')
    assert problem(doc_with({"a": {**wait_for, "timeout": "401d"}, "end": END})) == (
        "nodes.a.timeout",
        "must be at most 400d",
    )
    assert problem(doc_with({"a": {"wait": "0s", "next": "end"}, "end": END})) == (
        "nodes.a.wait",
        "must be longer than 0",
    )
    del wait_for["timeout"]
    assert problem(doc_with({"a": wait_for, "end": END})) == ("nodes.a.timeout", "is required")
    for bad in ("24:00", "10:60", "10", "ten", "10:00:00"):
        assert problem(doc_with({"a": {"until": bad, "next": "end"}, "end": END})) == (
            "nodes.a.until",
            f'"{bad}" is not a time of day (24-hour "HH:MM", like "10:00")',
        )
    assert problem(doc_with(lateness="soon")) == ("lateness", '"soon" is not a duration')


# -- node-level errors ---------------------------------------------------------------------------


def test_node_kind_errors() -> None:
    kinds = "do, wait, until, until_profile, wait_for, branch, split, exit"
    assert problem(doc_with({"a": {"next": "end"}, "end": END})) == ("nodes.a", f"takes exactly one of: {kinds}")
    assert problem(doc_with({"a": {"do": [COUPON], "wait": "1d"}, "end": END})) == (
        "nodes.a",
        f"takes exactly one of: {kinds} (found: do, wait)",
    )
    assert problem(doc_with({"a": {"do": [COUPON], "next": "end"}, "end": {"exit": False}})) == (
        "nodes.end.exit",
        "must be true",
    )
    assert problem(doc_with({"a": {"do": [{"action": "fax"}], "next": "end"}, "end": END})) == (
        "nodes.a.do[0].action",
        '"fax" is not an action (expected one of: coupon, points, tag, message, webhook, notify_staff)',
    )
    assert problem(doc_with({"a": {"do": [COUPON] * 21}})) == ("nodes.a.do", "must have at most 20 actions")
    assert problem(doc_with({"a": "end"})) == ("nodes.a", "must be an object")


def test_node_ids_and_counts() -> None:
    assert problem(doc_with({"a": {"do": [COUPON], "next": "b c"}, "b c": END})) == (
        "nodes.b c",
        '"b c" is not a valid node id (1-64 letters, digits, "_", ".", "-" or "?"; starts with a letter or digit)',
    )
    chain = {f"n{index}": {"wait": "1m", "next": f"n{index + 1}"} for index in range(200)}
    chain["n200"] = END
    assert problem(doc_with(chain, start="n0")) == ("nodes", "must have at most 200 nodes")
    del chain["n200"], chain["n199"]["next"]
    assert len(parse_journey(doc_with(chain, start="n0")).nodes) == 200
    assert problems(doc_with({})) == [("start", '"a" is not a node'), ("nodes", "must have at least one node")]


def test_split_errors() -> None:
    arms = [{"weight": 45, "next": "end"}, {"weight": 45, "next": "end"}]
    assert problem(doc_with({"a": {"split": arms}, "end": END})) == ("nodes.a.split", "weights add up to 90, not 100")
    holdout = {"weight": 10, "holdout": True, "next": "end"}
    assert problem(doc_with({"a": {"split": [*arms, holdout]}, "end": END})) == (
        "nodes.a.split[2].next",
        "a holdout arm acts on nobody: it takes no next",
    )
    two_holdouts = [{"weight": 90, "next": "end"}, {"weight": 5, "holdout": True}, {"weight": 5, "holdout": True}]
    assert problem(doc_with({"a": {"split": two_holdouts}, "end": END})) == (
        "nodes.a.split[2].holdout",
        "only one arm may be the holdout (already nodes.a.split[1])",
    )
    assert problem(doc_with({"a": {"split": [{"weight": 0, "next": "end"}, {"weight": 100}]}, "end": END})) == (
        "nodes.a.split[0].weight",
        "must be a number > 0",
    )
    assert problem(doc_with({"a": {"split": [{"weight": 100, "next": "end", "holdout": "yes"}]}, "end": END})) == (
        "nodes.a.split[0].holdout",
        "must be a boolean",
    )


# -- graph checks --------------------------------------------------------------------------------


def test_references_to_missing_nodes() -> None:
    assert problem(doc_with(start="x")) == ("start", '"x" is not a node')
    nodes = copy.deepcopy(library("new-fan"))
    nodes["nodes"]["welcome"]["next"] = "wait-clik"
    # Only the broken reference: the graph of a journey with a broken node is not judged further.
    assert problem(nodes) == ("nodes.welcome.next", '"wait-clik" is not a node')
    broken = {
        "a": {"wait_for": [{"event": "x", "next": "b"}], "timeout": "1d", "on_timeout": "c"},
        "b": {"branch": [{"if": {"tag": "t"}, "next": "d"}], "else": "e"},
        "c": {"split": [{"weight": 100, "next": "f"}]},
        "end": END,
    }
    assert problems(doc_with(broken)) == [
        ("nodes.b.branch[0].next", '"d" is not a node'),
        ("nodes.b.else", '"e" is not a node'),
        ("nodes.c.split[0].next", '"f" is not a node'),
    ]


def test_unreachable_nodes() -> None:
    nodes = {"a": {"do": [COUPON], "next": "end"}, "orphan": {"wait": "1d", "next": "end"}, "end": END, "z": END}
    assert problems(doc_with(nodes)) == [
        ("nodes.orphan", 'is not reachable from "start"'),
        ("nodes.z", 'is not reachable from "start"'),
    ]
    # A holdout arm leads nowhere: its (forbidden) next would not make a node reachable.
    assert parse_journey(doc_with({"a": {"split": [{"weight": 100, "holdout": True}]}})).nodes == {
        "a": Split((SplitArm(100, None, True),))
    }


def test_cycle_without_a_wait_is_rejected() -> None:
    nodes = {
        "a": {"do": [COUPON], "next": "b"},
        "b": {"branch": [{"if": {"tag": "vip"}, "next": "a"}], "else": "end"},
        "end": END,
    }
    assert problem(doc_with(nodes)) == ("nodes.a", "is on a cycle with no wait: a -> b -> a")
    assert problem(doc_with({"a": {"do": [COUPON], "next": "a"}})) == (
        "nodes.a",
        "is on a cycle with no wait: a -> a",
    )
    # One error per loop, at its first node in document order, naming the shortest way round.
    looped = {
        "w": {"wait": "1d", "next": "a"},
        "a": {"split": [{"weight": 50, "next": "b"}, {"weight": 50, "next": "c"}]},
        "b": {"do": [COUPON], "next": "c"},
        "c": {"do": [COUPON], "next": "a"},
    }
    assert problem(doc_with(looped, start="w")) == ("nodes.a", "is on a cycle with no wait: a -> c -> a")


@pytest.mark.parametrize(
    "wait",
    [
        {"wait": "1d"},
        {"until": "10:00"},
        {"until_profile": "birthday"},
        {"wait_for": [{"event": "click", "next": "a"}], "timeout": "1d"},
    ],
)
def test_cycle_through_a_wait_is_accepted(wait: dict[str, Any]) -> None:
    nodes = {
        "a": {"do": [COUPON], "next": "w"},
        "w": {**wait, **({} if "wait_for" in wait else {"next": "a"})},
    }
    if "wait_for" in wait:
        nodes["w"]["on_timeout"] = "a"
    journey = parse_journey(doc_with(nodes))
    assert journey.nodes["a"] == Do((Action("coupon", {"coupon_id": "C1"}),), "w")


def test_several_errors_at_once() -> None:
    doc = doc_with(
        {
            "a": {"do": [COUPON], "next": "b"},
            "b": {"wait_for": [{"event": "click", "next": "a"}], "timeout": "1x"},
            "c": {"split": [{"weight": 50, "next": "a"}]},
        },
        tz="Nowhere",
        entry={"segment": "s", "x": 1},
        key="sku",
        extra=1,
    )
    assert problems(doc, journey_id="other") == [
        ("entry.x", 'unknown field "x" (expected one of: segment)'),
        ("nodes.b.timeout", '"1x" is not a duration'),
        ("nodes.c.split", "weights add up to 50, not 100"),
        ("tz", '"Nowhere" is not a time zone (an IANA name like "Asia/Shanghai")'),
        ("key", "must be a list"),
        (
            "extra",
            'unknown field "extra" (expected one of: id, description, entry, key, reentry, exit, goal, tz, '
            "lateness, fatigue, start, nodes)",
        ),
        ("id", '"j" does not match the id in the URL "other"'),
    ]


def test_graph_errors_are_reported_with_other_field_errors() -> None:
    doc = doc_with({"a": {"do": [COUPON], "next": "a"}, "lost": END}, entry={"segment": "s", "x": 1})
    assert problems(doc) == [
        ("entry.x", 'unknown field "x" (expected one of: segment)'),
        ("nodes.lost", 'is not reachable from "start"'),
        ("nodes.a", "is on a cycle with no wait: a -> a"),
    ]


def test_the_error_is_a_validation_error_with_the_wire_shape() -> None:
    with pytest.raises(JourneyInvalid) as caught:
        parse_journey(doc_with(start="x", tz="Nowhere"))
    assert caught.value.path == "start"
    assert str(caught.value).endswith("(and 1 more)")
    body = caught.value.to_json()["error"]
    assert isinstance(body, dict)
    assert [error["path"] for error in body["errors"]] == ["start", "tz"]


def test_parsing_does_not_alias_the_document() -> None:
    doc = library("cart-recovery")
    journey = parse_journey(doc)
    doc["nodes"]["sms"]["do"][0]["params"]["sku"] = "changed"
    sms = journey.nodes["sms"]
    assert isinstance(sms, Do)
    assert sms.actions[0].params["params"] == {"sku": "{{event.sku}}"}


def test_an_exit_may_correlate_with_the_entry_event() -> None:
    """`exit` matchers take `correlate`: a refund of one order ends only that order's instance."""
    document = copy.deepcopy(json.loads((JOURNEYS / "post-purchase.json").read_text()))
    document["exit"] = [{"event": "refund", "correlate": ["order_id"]}]
    assert parse_journey(document).exits == (JourneyExit(Matcher("refund"), ("order_id",)),)
    document["exit"] = [{"event": "refund", "correlate": "order_id"}]
    with pytest.raises(JourneyInvalid) as refused:
        parse_journey(document)
    assert (refused.value.path, refused.value.message) == ("exit[0].correlate", "must be a list")
