"""When to send a failed batch again, in the shape of the OpenTelemetry Collector's exporterhelper
retry sender: exponential backoff with jitter from an initial interval up to a maximum interval, a
server's throttle delay (Retry-After, RetryInfo) instead when it gives one, and no retry whose wait
would end after the maximum elapsed time. Pure: the clock and the randomness are passed in."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.config import RetryConfig


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after a failed attempt."""

    wait: float | None  # seconds to wait before the next attempt; None: give up
    elapsed: float  # seconds since the first attempt, when the decision was made


class RetryPolicy:
    """The retry settings of a destination; start() makes the Backoff of one batch."""

    def __init__(
        self,
        *,
        initial_interval: float = 0.5,
        multiplier: float = 2.0,
        randomization_factor: float = 0.5,
        max_interval: float = 30.0,
        max_elapsed: float = 300.0,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = random.random,  # uniform in [0, 1)
    ) -> None:
        self.initial_interval = initial_interval
        self.multiplier = multiplier
        self.randomization_factor = randomization_factor
        self.max_interval = max_interval
        self.max_elapsed = max_elapsed
        self.enabled = enabled
        self.clock = clock
        self.random = random

    @classmethod
    def from_config(
        cls,
        config: RetryConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = random.random,
    ) -> RetryPolicy:
        # RetryConfig names no multiplier, randomization factor or switch: the defaults apply
        return cls(
            initial_interval=config.initial_interval,
            max_interval=config.max_interval,
            max_elapsed=config.max_elapsed,
            clock=clock,
            random=random,
        )

    def start(self) -> Backoff:
        """The backoff of one batch, its elapsed time counted from now (its first attempt)."""
        return Backoff(self)


class Backoff:
    """The retries of one batch: each failed attempt asks next() how long to wait."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self._started = policy.clock()
        self._interval = policy.initial_interval

    def next(self, throttle: float | None = None) -> Decision:
        """After a failed attempt: wait, or give up. `throttle` is the delay the server asked
        for; it replaces the backoff (shorter or longer, not capped at max_interval), and only
        the elapsed-time budget limits it. The interval grows either way."""
        p = self._policy
        elapsed = p.clock() - self._started
        if not p.enabled:
            return Decision(None, elapsed)
        if throttle is not None:
            wait = throttle
        else:
            # uniform in interval * [1 - factor, 1 + factor); randomness is drawn only here, so
            # a throttled attempt leaves the random sequence as it was
            f = p.randomization_factor
            wait = self._interval * (1 - f + 2 * f * p.random())
        if elapsed + wait > p.max_elapsed:
            return Decision(None, elapsed)
        self._interval = min(self._interval * p.multiplier, p.max_interval)
        return Decision(wait, elapsed)
