"""The retry policy (gateway/delivery/retry.py) with a fake clock and fixed randomness, and the
merging (gateway/delivery/merge.py): in process, no I/O, no sleeps."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.config import RetryConfig
from gateway.delivery.batch import Batch
from gateway.delivery.merge import MergeMemo, Run, halves, piece, tally
from gateway.delivery.queues import DurableQueue, MemoryQueue
from gateway.delivery.retry import RetryPolicy
from gateway.otlp.signals import LOGS, TRACES


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeRandom:
    """Hands out the given numbers in turn, and counts how many were drawn."""

    def __init__(self, values: Iterable[float]) -> None:
        self._values = iter(values)
        self.drawn = 0

    def __call__(self) -> float:
        self.drawn += 1
        return next(self._values)


def _fixed(value: float) -> FakeRandom:
    return FakeRandom(itertools.repeat(value))


def _policy(
    clock: FakeClock,
    rnd: FakeRandom | None = None,
    *,
    initial_interval: float = 0.5,
    max_interval: float = 4.0,
    max_elapsed: float = 100.0,
    enabled: bool = True,
) -> RetryPolicy:
    return RetryPolicy(
        initial_interval=initial_interval,
        max_interval=max_interval,
        max_elapsed=max_elapsed,
        enabled=enabled,
        clock=clock,
        random=rnd or _fixed(0.5),  # 0.5: the jitter is a factor of exactly 1
    )


# -- retry -------------------------------------------------------------------------------------


def test_backoff_doubles_up_to_max_interval() -> None:
    clock = FakeClock()
    backoff = _policy(clock).start()
    waits = []
    for _ in range(7):
        decision = backoff.next()
        assert decision.wait is not None
        waits.append(decision.wait)
        clock.now += decision.wait
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]


def test_jitter_spans_half_to_one_and_a_half_intervals() -> None:
    clock = FakeClock()
    backoff = _policy(clock, FakeRandom([0.0, 0.9375, 0.25])).start()
    assert backoff.next().wait == 0.5 * 0.5
    assert backoff.next().wait == 1.0 * 1.4375
    assert backoff.next().wait == 2.0 * 0.75


def test_the_cap_is_on_the_interval_and_jitter_goes_above_it() -> None:
    """As before the refactoring: the interval stops at max_interval, the jittered wait can be
    up to half as long again."""
    clock = FakeClock()
    backoff = _policy(clock, _fixed(0.9375), initial_interval=3.0, max_interval=4.0).start()
    assert backoff.next().wait == 3.0 * 1.4375
    assert backoff.next().wait == 4.0 * 1.4375  # 6.0 capped at 4.0
    assert backoff.next().wait == 4.0 * 1.4375


def test_waits_are_those_of_the_former_inline_code() -> None:
    """The pipeline used to wait `delay * random.uniform(0.5, 1.5)` and double delay up to
    max_interval: the policy gives the same waits for the same random numbers."""
    config = RetryConfig(initial_interval=0.2, max_interval=3.0, max_elapsed=1e9)
    ours, theirs = random.Random(7), random.Random(7)
    backoff = RetryPolicy.from_config(config, clock=FakeClock(), random=ours.random).start()
    delay = config.initial_interval
    for _ in range(12):
        assert backoff.next().wait == delay * theirs.uniform(0.5, 1.5)
        delay = min(delay * 2, config.max_interval)


def test_gives_up_when_the_wait_would_end_after_max_elapsed() -> None:
    clock = FakeClock()
    backoff = _policy(clock, max_elapsed=10.0).start()
    clock.now += 9.0
    decision = backoff.next()  # 9 + 0.5 is within 10
    assert decision.wait == 0.5 and decision.elapsed == 9.0
    clock.now += 0.5
    decision = backoff.next()  # 9.5 + 1 is not
    assert decision.wait is None and decision.elapsed == 9.5


def test_a_wait_ending_exactly_at_max_elapsed_is_taken() -> None:
    clock = FakeClock()
    backoff = _policy(clock, max_elapsed=10.0).start()
    clock.now += 9.5
    assert backoff.next().wait == 0.5


def test_throttle_delay_replaces_the_backoff_and_draws_no_randomness() -> None:
    clock = FakeClock()
    rnd = _fixed(0.5)
    backoff = _policy(clock, rnd).start()
    assert backoff.next(throttle=7.0).wait == 7.0  # longer than max_interval: not capped
    assert backoff.next(throttle=0.1).wait == 0.1  # shorter than the backoff: taken too
    assert backoff.next(throttle=0.0).wait == 0.0
    assert rnd.drawn == 0
    assert backoff.next().wait == 4.0  # the interval grew all along: 0.5, 1, 2, 4
    assert rnd.drawn == 1


def test_throttle_delay_is_capped_by_max_elapsed_only() -> None:
    clock = FakeClock()
    backoff = _policy(clock, max_elapsed=30.0).start()
    clock.now += 10.0
    assert backoff.next(throttle=20.0).wait == 20.0
    decision = backoff.next(throttle=20.01)
    assert decision.wait is None and decision.elapsed == 10.0


def test_disabled_retry_gives_up_at_once() -> None:
    clock = FakeClock()
    rnd = _fixed(0.5)
    backoff = _policy(clock, rnd, enabled=False).start()
    assert backoff.next().wait is None
    assert backoff.next(throttle=0.0).wait is None
    assert rnd.drawn == 0


def test_no_elapsed_budget_means_no_retry() -> None:
    clock = FakeClock()
    backoff = _policy(clock, max_elapsed=0.0).start()
    clock.now += 0.001
    assert backoff.next().wait is None
    assert backoff.next(throttle=0.0).wait is None


def test_each_batch_has_its_own_backoff() -> None:
    clock = FakeClock()
    policy = _policy(clock, max_elapsed=10.0)
    first = policy.start()
    assert first.next().wait == 0.5
    assert first.next().wait == 1.0
    clock.now += 20.0
    assert first.next().wait is None
    second = policy.start()  # starts over: its own interval and elapsed time
    assert second.next().wait == 0.5


def test_from_config_takes_the_config_and_the_collector_defaults() -> None:
    config = RetryConfig(initial_interval=0.1, max_interval=2.0, max_elapsed=60.0)
    policy = RetryPolicy.from_config(config)
    assert (policy.initial_interval, policy.max_interval, policy.max_elapsed) == (0.1, 2.0, 60.0)
    assert (policy.multiplier, policy.randomization_factor, policy.enabled) == (2.0, 0.5, True)


# -- merging -----------------------------------------------------------------------------------


def _batch(name: str, n: int, tenant: str = "t") -> Batch:
    req = ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add().spans
    for i in range(n):
        span = spans.add(name=f"{name}-{i}")
        span.trace_id = bytes(range(16))
        span.span_id = bytes(range(8))
    return Batch(TRACES, req.SerializeToString(), n, tenant)


def _names(batch: Batch) -> list[str]:
    req = ExportTraceServiceRequest.FromString(batch.payload)
    return [s.name for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]


def _leaves(parts: list[Batch]) -> list[list[Batch]]:
    """Halve until nothing halves any more: single items, in order."""
    pair = halves(parts)
    if pair is None:
        return [parts]
    return _leaves(pair[0]) + _leaves(pair[1])


def test_merge_then_halves_round_trip() -> None:
    parts = [_batch("a", 1), _batch("b", 5), _batch("c", 2), _batch("d", 3)]
    merged = MergeMemo().merge(parts)
    assert merged.payload == b"".join(p.payload for p in parts)
    assert merged.items == 11 and (merged.signal, merged.tenant) == (TRACES, "t")
    assert _names(merged) == [n for p in parts for n in _names(p)]
    first, second = halves(parts) or ([], [])
    assert first and second and first + second == parts  # the requests themselves, in order
    leaves = _leaves(parts)
    assert all(len(leaf) == 1 and leaf[0].items == 1 for leaf in leaves)
    assert [n for leaf in leaves for n in _names(leaf[0])] == _names(merged)


def test_halves_of_requests_cut_by_size() -> None:
    small, big = _batch("s", 1), _batch("b", 40)
    assert halves([big, small, small]) == ([big], [small, small])
    assert halves([small, small, big]) == ([small, small], [big])
    assert halves([small, big]) == ([small], [big])


def test_halves_of_one_request_at_the_wire_level() -> None:
    batch = _batch("w", 6)
    pair = halves([batch])
    assert pair is not None
    (left,), (right,) = pair
    assert left.items + right.items == 6 and left.items > 0 and right.items > 0
    assert (left.tenant, left.signal) == ("t", TRACES)
    assert _names(left) + _names(right) == _names(batch)


def test_halves_of_a_single_item_or_unreadable_request_is_none() -> None:
    assert halves([_batch("one", 1)]) is None
    assert halves([Batch(TRACES, b"\x0a\xff\xff\xff\x0f", 1, "t")]) is None


def test_piece_counts_its_items() -> None:
    whole = _batch("p", 4, tenant="acme")
    part = piece(whole, _batch("q", 3).payload)
    assert (part.items, part.tenant, part.signal) == (3, "acme", TRACES)


def test_tally_counts_what_parts_hold() -> None:
    one = _batch("x", 3)
    assert tally([one]) is one
    total = tally([one, _batch("y", 4)])
    assert (total.items, total.payload, total.tenant) == (7, b"", "t")


def test_run_takes_what_merges_and_fits() -> None:
    first = _batch("f", 1)
    size = len(first.payload)
    run = Run(1, first, max_bytes=3 * size)
    assert run.has_room()
    assert run.take(2, _batch("g", 1))
    assert not run.take(3, _batch("h", 1, tenant="other"))  # another tenant
    assert not run.take(4, Batch(LOGS, first.payload, 1, "t"))  # another signal
    assert not run.take(5, _batch("big", 3))  # does not fit
    assert run.take(6, _batch("i", 1))
    assert not run.has_room()
    assert run.tokens == [1, 2, 6] and run.size == 3 * size
    assert [p.items for p in run.parts] == [1, 1, 1]


def test_run_takes_its_first_request_whatever_its_size() -> None:
    big = _batch("big", 20)
    run = Run(9, big, max_bytes=10)
    assert not run.has_room() and run.parts == [big] and run.tokens == [9]


def test_merge_memo_shares_recent_merges_only() -> None:
    memo = MergeMemo()
    memo.active = True
    runs = [[_batch(f"r{i}", 1), _batch(f"s{i}", 1)] for i in range(MergeMemo.SIZE + 1)]
    merged = [memo.merge(parts) for parts in runs]
    assert memo.merge(runs[-1]) is merged[-1]
    assert memo.merge(runs[1]) is merged[1]
    assert memo.merge(runs[0]) is not merged[0]  # evicted: it was the oldest


def test_merge_memo_is_on_with_more_than_one_memory_queue(tmp_path: Path) -> None:
    memo = MergeMemo()
    memo.update([MemoryQueue(1000), DurableQueue(tmp_path, 1000)])
    assert not memo.active
    memo.update([MemoryQueue(1000), MemoryQueue(1000)])
    assert memo.active
    parts = [_batch("a", 1), _batch("b", 1)]
    merged = memo.merge(parts)
    memo.update([MemoryQueue(1000)])  # off: what it held is forgotten
    memo.active = True
    assert memo.merge(parts) is not merged
