"""Run sizes: how many events, users, timers and seconds each measurement uses."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Size:
    """Knobs of one run; `smoke` is for CI (seconds), `default` for a few minutes, `full` for the long run."""

    name: str
    users: int  # distinct users of the live workload
    burst_events: int  # events per flat-out throughput run
    trial_s: float  # seconds per paced trial when searching the sustainable rate
    trials: int  # paced trials per transport
    latency_rates: tuple[int, ...]  # offered rates for the latency rows (events/s)
    latency_s: float  # seconds per latency row
    pending_levels: tuple[int, ...]  # pending timers for the timer-lateness rows
    timer_probes: int  # timers made due during each timer-lateness row
    memory_users: int  # users in the memory sample
    replay_events: int  # events in the recorded log replayed through the dry-run
    backtest_events: int  # events in the .jsonl.gz log `beacon backtest` reads
    durable_users: int  # users for the durable_rules comparison (it caps live sessions at 1,024)
    durable_events: int  # events in the durable_rules comparison log
    durable_timers: int  # timers made due at once in the side-by-side timer row
    timer_window_ms: int  # probes are sent this long before the first falls due, and fall due over this long
    scaling_events: int  # events preloaded per worker-count row
    worker_counts: tuple[int, ...]  # worker processes per scaling row
    drain_timeout_s: float  # longest wait for a backlog to drain
    journey_events: int  # events per flat-out run of the journey stream
    journey_instances: int  # users put into a journey, waiting, per memory case
    segment_events: int  # events per flat-out run of the segment-maintenance rows
    segment_rounds: int  # off-then-on rounds of those runs, averaged
    segment_users: int  # users made members of every segment of each segment memory case
    estimate_users: int  # user records the segment estimate scans
    plan_users: int  # members of the audience one plan occurrence is sent to
    archive_events: int  # producer events in the archive the funnel query reads
    archive_sample_events: int  # of those, events archived the whole way (stream, drain) to measure the write cost


SIZES = {
    "smoke": Size(
        name="smoke",
        users=300,
        burst_events=1_500,
        trial_s=1.0,
        trials=3,
        latency_rates=(200, 500, 1000),
        latency_s=1.0,
        pending_levels=(500, 2_000),
        timer_probes=50,
        memory_users=300,
        replay_events=300,
        backtest_events=2_000,
        durable_users=100,
        durable_events=1_000,
        durable_timers=10,
        timer_window_ms=1_000,
        scaling_events=1_000,
        worker_counts=(1, 2),
        drain_timeout_s=30,
        journey_events=1_500,
        journey_instances=1_000,
        segment_events=1_500,
        segment_rounds=1,
        segment_users=1_000,
        estimate_users=2_000,
        plan_users=5_000,
        archive_events=5_000,
        archive_sample_events=5_000,
    ),
    "default": Size(
        name="default",
        users=20_000,
        burst_events=30_000,
        trial_s=5.0,
        trials=4,
        latency_rates=(1_000, 5_000, 10_000),
        latency_s=8.0,
        pending_levels=(10_000, 100_000),
        timer_probes=1_000,
        memory_users=20_000,
        replay_events=5_000,
        backtest_events=300_000,
        durable_users=1_000,
        durable_events=20_000,
        durable_timers=50,
        timer_window_ms=2_000,
        scaling_events=30_000,
        worker_counts=(1, 2, 4),
        drain_timeout_s=120,
        journey_events=60_000,
        journey_instances=100_000,
        segment_events=60_000,
        segment_rounds=2,
        segment_users=100_000,
        estimate_users=100_000,
        plan_users=200_000,
        archive_events=1_000_000,
        archive_sample_events=100_000,
    ),
    "full": Size(
        name="full",
        users=200_000,
        burst_events=200_000,
        trial_s=10.0,
        trials=6,
        latency_rates=(1_000, 5_000, 10_000),
        latency_s=20.0,
        pending_levels=(10_000, 100_000, 1_000_000),
        timer_probes=2_000,
        memory_users=100_000,
        replay_events=10_000,
        backtest_events=10_000_000,
        durable_users=1_000,
        durable_events=100_000,
        durable_timers=200,
        timer_window_ms=4_000,
        scaling_events=100_000,
        worker_counts=(1, 2, 4),
        drain_timeout_s=600,
        journey_events=200_000,
        journey_instances=1_000_000,
        segment_events=200_000,
        segment_rounds=2,
        segment_users=1_000_000,
        estimate_users=1_000_000,
        plan_users=1_000_000,
        archive_events=10_000_000,
        archive_sample_events=1_000_000,
    ),
}


def size_named(name: str, **overrides: int | None) -> Size:
    """The preset `name`, with explicit counts laid over it."""
    given: dict[str, Any] = {key: value for key, value in overrides.items() if value is not None}
    return replace(SIZES[name], **given)
