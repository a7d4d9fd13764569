"""The benchmark's pure parts: sizes and scaling, percentiles, duplicate counting, the figures and
their table and JSON object. No I/O beyond reading the machine's description."""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# Full sizes (what `--scale 1` runs), as issue 9 states them.
INGEST_EVENTS = 20_000  # POSTed in batches of 100 by four clients
INGEST_BATCH = 100
INGEST_CLIENTS = 4
INGEST_ROUNDS = 3  # the producer and the API take turns; each figure is its median
INGEST_WORKERS = 2  # LIFECYCLE_INGEST_WORKERS of the API: one per core (docs/performance.md)
STAGER_EVENTS = 100_000  # already in Kafka when the stager starts
DISPATCHER_SENDS = 5_000  # already due in PostgreSQL when the dispatcher starts
DISPATCHER_ROUNDS = 3  # of the dispatcher then the raw loop, plain and with DKIM: each figure their median
LATENCY_SECONDS = 60.0  # of steady open-loop load
LATENCY_MIN_SECONDS = 5.0
LATENCY_LOAD = 0.7  # of the measured dispatcher throughput
TICK_SMALL = 10_000  # customers
TICK_LARGE = 1_000_000
TICK_DUE = 1_000  # time-driven changes due among them
CAMPAIGN_CUSTOMERS = 100_000  # a campaign's audience, from its start to the last send (issue 10)
CAMPAIGN_RAW_SAMPLE = 2_000  # distinct messages the raw loop cycles over for as many sends
PIPELINE_CUSTOMERS = 2_000  # today's end-to-end burst: sign-ups ...
PIPELINE_VIEWS = 9  # ... and product views per customer

PHASES: tuple[str, ...] = ("ingest", "stager", "dispatcher", "latency", "tick", "pipeline", "replicas", "campaign")

# The JSON object: exactly these keys, every one present (null when its phase did not run).
ISSUE_KEYS: tuple[str, ...] = (
    "ingest_events_per_s", "ingest_raw_per_s", "ingest_ratio",
    "stager_events_per_s",
    "dispatcher_emails_per_s", "smtp_raw_per_s", "dispatcher_ratio",
    "dispatcher_dkim_ratio", "dispatcher_distinct_ratio",
    "latency_p50_s", "latency_p99_s",
    "tick_10k_s", "tick_1m_s", "tick_ratio",
    "replicas_2_emails_per_s", "replicas_2_duplicates",
)
# Today's figures, kept: the whole pipeline (one of each service) under a burst of sign-ups and views.
PIPELINE_KEYS: tuple[str, ...] = (
    "pipeline_ingest_events_per_s",  # POST /v1/events while the stager and dispatcher work
    "pipeline_stager_events_per_s",  # events applied per second, from the first POST
    "pipeline_emails_per_s",  # emails delivered per second, first delivery to last
    "pipeline_delay_p50_s",  # due time to delivery while the burst queues up behind the stager
    "pipeline_delay_p99_s",
)
# A campaign of CAMPAIGN_CUSTOMERS: its start to the last send, beside the raw SMTP ceiling for as many.
CAMPAIGN_KEYS: tuple[str, ...] = (
    "campaign_seconds",  # from the dispatcher's start (it starts the campaign at once) to the last arrival
    "campaign_raw_seconds",  # as many messages by the plain aiosmtplib loop
    "campaign_ratio",  # raw seconds / campaign seconds: the campaign's share of the SMTP ceiling
)
JSON_KEYS: tuple[str, ...] = ISSUE_KEYS + PIPELINE_KEYS + CAMPAIGN_KEYS


@dataclass(frozen=True)
class Scale:
    """Every count and duration of the run multiplied by `factor` (1 is the full size)."""

    factor: float = 1.0

    def __post_init__(self) -> None:
        if not (0 < self.factor <= 1):
            raise ValueError(f"--scale must be in (0, 1], got {self.factor}")

    def count(self, full: int, minimum: int = 1) -> int:
        return max(minimum, round(full * self.factor))

    def seconds(self, full: float, minimum: float) -> float:
        return max(minimum, full * self.factor)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with at least `fraction` of all values at or below it."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def rate(count: int, seconds: float) -> float:
    """`count` per second over `seconds` (never a division by zero)."""
    return count / max(seconds, 1e-9)


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None or baseline == 0:
        return None
    return value / baseline


@dataclass(frozen=True)
class Delivery:
    """One message in the sink: who it went to, which journey step, its Message-ID, when it arrived."""

    message_id: str
    to: str
    journey: str
    step: int
    at: float  # arrival, seconds since the epoch


def count_duplicates(deliveries: Iterable[Delivery]) -> int:
    """Messages beyond the first for the same email: a repeated Message-ID, or another message for the
    same recipient, journey and step (a second run of the same step)."""
    ids: Counter[str] = Counter()
    keys: Counter[tuple[str, str, int]] = Counter()
    duplicates = 0
    for delivery in deliveries:
        key = (delivery.to.lower(), delivery.journey, delivery.step)
        if ids[delivery.message_id] or keys[key]:
            duplicates += 1
        ids[delivery.message_id] += 1
        keys[key] += 1
    return duplicates


def spread_rate(times: Sequence[float]) -> float | None:
    """Arrivals per second from the first arrival to the last ((n - 1) intervals), None for fewer than 2."""
    if len(times) < 2:
        return None
    return rate(len(times) - 1, max(times) - min(times))


@dataclass
class Row:
    figure: str
    value: float | None
    baseline: float | None = None
    unit: str = ""  # "/s", " s" or "" (a count)

    @property
    def ratio(self) -> float | None:
        return ratio(self.value, self.baseline)


@dataclass
class Results:
    """What a run measured: the JSON figures by key, and the table's rows in order."""

    figures: dict[str, float | int | None] = field(default_factory=lambda: dict.fromkeys(JSON_KEYS))
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def set(self, key: str, value: float | int | None) -> None:
        if key not in self.figures:
            raise KeyError(f"{key} is not one of the benchmark's figures")
        self.figures[key] = value

    def get(self, key: str) -> float | None:
        value = self.figures[key]
        return None if value is None else float(value)

    def as_json(self) -> dict[str, float | int | None]:
        out: dict[str, float | int | None] = {}
        for key in JSON_KEYS:
            value = self.figures[key]
            out[key] = value if value is None or isinstance(value, int) else round(float(value), 4)
        return out


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == " s":
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    if unit == "":
        return f"{value:.0f}"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def table(rows: Sequence[Row]) -> str:
    width = max([len("figure")] + [len(r.figure) for r in rows]) + 2
    lines = [f"{'figure':<{width}}{'value':>12}{'raw baseline':>16}{'ratio':>9}"]
    for row in rows:
        value = _number(row.value, row.unit)
        baseline = _number(row.baseline, row.unit) if row.baseline is not None else ""
        factor = f"{row.ratio:.2f}" if row.ratio is not None else ""
        lines.append(f"{row.figure:<{width}}{value:>12}{baseline:>16}{factor:>9}")
    return "\n".join(lines)


def machine() -> str:
    memory = ""
    try:
        with open("/proc/meminfo") as info:
            kib = int(info.readline().split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = ", load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    return (f"{platform.machine()}, {os.cpu_count()} cores{memory}, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}{load}")


_started = time.monotonic()


def say(message: str) -> None:
    """A progress line, with the seconds since the run started."""
    print(f"[{time.monotonic() - _started:7.1f} s] {message}", file=sys.stdout, flush=True)
