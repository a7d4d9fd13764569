"""Journey definitions and the journey engine (pure).

A journey is data: an entry trigger with filters, steps of `wait` and `send`,
exit triggers and a re-entry rule. The engine turns a trigger or a due step
into actions; the dispatcher executes them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from lifecycle.core.triggers import Trigger, TriggerType

Reentry = Literal["while_inactive", "restart", "once", "once_per_key"]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # date.weekday() order
# the names of journeys, segments and campaigns
NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
MAX_WEIGHT = 1_000_000  # an A/B variant's weight, in journeys and campaigns


@dataclass(frozen=True)
class TriggerMatch:
    trigger: TriggerType
    where: dict[str, list[Any]] = field(default_factory=dict)  # data field -> accepted values

    def matches(self, trigger: Trigger) -> bool:
        if trigger.type is not self.trigger:
            return False
        return all(trigger.data.get(name) in accepted for name, accepted in self.where.items())


@dataclass(frozen=True)
class ClickCondition:
    step: int  # send step number, counted from 1
    link: str


@dataclass(frozen=True)
class WaitStep:
    wait: timedelta


@dataclass(frozen=True)
class CouponSpec:
    """A unique code issued at send time, or the one an earlier step of the run issued."""

    kind: str = "percent"  # percent | fixed
    amount: float = 0.0
    valid: timedelta = timedelta(days=3)
    by_tier: tuple[tuple[str, float], ...] = ()  # (tier, amount): the offer grows with the customer's value
    reuse_step: int | None = None  # remind of the coupon of that send step instead of issuing one

    def amount_for(self, tier: str) -> float:
        return dict(self.by_tier).get(tier, self.amount)


@dataclass(frozen=True)
class Variant:
    name: str
    weight: int
    template: str
    subject: str | None = None


@dataclass(frozen=True)
class Branch:
    """One way a send step can go: the first branch whose condition holds picks the template."""

    template: str
    if_clicked: ClickCondition | None = None
    unless_clicked: ClickCondition | None = None


@dataclass(frozen=True)
class SendStep:
    template: str
    number: int  # counted over send steps, from 1
    if_clicked: ClickCondition | None = None
    unless_clicked: ClickCondition | None = None
    branches: tuple[Branch, ...] = ()
    coupon: CouponSpec | None = None
    recommendations: int = 0
    variants: tuple[Variant, ...] = ()
    id: str = ""  # stable across versions of the journey (default: its template); runs point at it
    at: time | None = None  # local time of day it goes out at (the customer's zone)
    on: tuple[int, ...] = ()  # local weekdays it may go out on (0: Monday); empty: any day

    def templates(self) -> tuple[str, ...]:
        names = [self.template, *(b.template for b in self.branches), *(v.template for v in self.variants)]
        return tuple(dict.fromkeys(names))


Step = WaitStep | SendStep


@dataclass(frozen=True)
class Journey:
    name: str
    entry: TriggerMatch | None  # None: no trigger starts it (a campaign's journey, started by the campaign)
    steps: tuple[Step, ...]
    exits: tuple[TriggerMatch, ...] = ()
    reentry: Reentry = "while_inactive"
    reentry_key: str | None = None  # data field naming the period for once_per_key
    consent: tuple[str, ...] = ("opted_in",)
    marketing: bool = True
    description: str = ""
    category: str = "news"  # cart_reminders | offers | news: what a customer can leave on the preference page
    reentry_cooldown: timedelta | None = None  # no new run within this of the start of the previous one
    unless_active: tuple[str, ...] = ()  # journeys whose active run keeps this one from starting

    def first_send(self, start: datetime) -> tuple[int, datetime] | None:
        return self._next_send(-1, start)

    def next_send(self, index: int, due_at: datetime) -> tuple[int, datetime] | None:
        """The send after step `index`; waits count from the previous step's due time."""
        return self._next_send(index, due_at)

    def _next_send(self, index: int, due_at: datetime) -> tuple[int, datetime] | None:
        moment = due_at
        for position in range(index + 1, len(self.steps)):
            step = self.steps[position]
            if isinstance(step, WaitStep):
                moment += step.wait
            else:
                return position, moment
        return None

    def send_step(self, index: int) -> SendStep:
        step = self.steps[index] if 0 <= index < len(self.steps) else None
        if not isinstance(step, SendStep):
            raise ValueError(f"step {index} of {self.name} is not a send step")
        return step

    def index_of(self, step_id: str) -> int | None:
        """Where the send step `step_id` is in this version, None when it has none."""
        for index, step in enumerate(self.steps):
            if isinstance(step, SendStep) and step.id == step_id:
                return index
        return None


@dataclass
class Run:
    run_id: int
    journey: str
    status: str  # active | completed | exited | failed
    entry_key: str
    step_index: int | None
    due_at: datetime | None
    started_at: datetime
    context: dict[str, Any] = field(default_factory=dict)
    clicks: list[dict[str, Any]] = field(default_factory=list)
    version_id: int | None = None  # the journey version the run started on
    step_id: str | None = None  # its next send step


@dataclass(frozen=True)
class StartRun:
    journey: str
    entry_key: str
    step_index: int
    due_at: datetime
    started_at: datetime
    context: dict[str, Any]


@dataclass(frozen=True)
class ExitRun:
    run_id: int
    reason: str


@dataclass(frozen=True)
class RecordClick:
    run_id: int
    step: int
    link: str


Action = StartRun | ExitRun | RecordClick


def on_trigger(journeys: list[Journey], runs: list[Run], trigger: Trigger,
               journey_of: Callable[[Run], Journey | None] | None = None) -> list[Action]:
    """What a trigger does to one customer's runs. `runs` holds all of them, ended ones too.

    `journeys` are the current versions (they start runs); `journey_of(run)` is the version a run
    started on, whose exit rules apply to it (default: the current version of its journey).
    """
    actions: list[Action] = []
    by_name = {j.name: j for j in journeys}
    version_of = journey_of or (lambda run: by_name.get(run.journey))
    active = {r.journey: r for r in runs if r.status == "active"}

    if trigger.type is TriggerType.ENGAGEMENT and trigger.data.get("kind") == "clicked":
        # the run of the clicked email when the dispatcher could tell it, else the journey's latest run
        run_id = trigger.data.get("run_id")
        target = next((r for r in runs if r.run_id == run_id), None) if run_id is not None else None
        target = target or _latest_run(runs, str(trigger.data.get("journey")))
        if target is not None and trigger.data.get("step") is not None:
            actions.append(RecordClick(target.run_id, int(trigger.data["step"]), str(trigger.data.get("link"))))

    exited: set[str] = set()
    for name, run in active.items():
        journey = version_of(run)
        if journey is not None and any(rule.matches(trigger) for rule in journey.exits):
            actions.append(ExitRun(run.run_id, f"exit:{trigger.type.value}"))
            exited.add(name)

    if trigger.backfill:
        return actions  # history starts no journey
    for journey in journeys:
        if journey.entry is None or not journey.entry.matches(trigger):
            continue
        entry_key = _entry_key(journey, trigger)
        running = active.get(journey.name) if journey.name not in exited else None
        if journey.reentry == "once" and any(r.journey == journey.name for r in runs):
            continue
        if journey.reentry == "once_per_key" and any(
            r.journey == journey.name and r.entry_key == entry_key for r in runs
        ):
            continue
        if journey.reentry_cooldown is not None and any(
            r.journey == journey.name and trigger.occurred_at - r.started_at < journey.reentry_cooldown for r in runs
        ):
            continue
        if any(other in active and other not in exited for other in journey.unless_active):
            continue
        if running is not None:
            if journey.reentry != "restart":
                continue
            actions.append(ExitRun(running.run_id, "restarted"))
        first = journey.first_send(trigger.occurred_at)
        if first is None:
            continue
        index, due_at = first
        actions.append(
            StartRun(journey.name, entry_key, index, due_at, trigger.occurred_at, dict(trigger.data))
        )
    return actions


def _entry_key(journey: Journey, trigger: Trigger) -> str:
    if journey.reentry == "once_per_key" and journey.reentry_key:
        return str(trigger.data.get(journey.reentry_key))
    return trigger.trigger_id


def _latest_run(runs: list[Run], journey: str) -> Run | None:
    candidates = [r for r in runs if r.journey == journey]
    return max(candidates, key=lambda r: (r.started_at, r.run_id)) if candidates else None


@dataclass(frozen=True)
class Recipient:
    """What the dispatcher knows of a customer when a step falls due."""

    email: str | None
    consent: str | None
    suppressed: str | None
    first_marketing_sent_at: datetime | None
    last_engagement_at: datetime | None
    unsubscribed_categories: tuple[str, ...] = ()
    timezone: str | None = None
    recent_marketing_sends: int = 0  # within the frequency cap's window


@dataclass(frozen=True)
class SendPolicy:
    sunset_days: int = 365
    frequency_cap_count: int = 0  # 0: no cap
    frequency_cap_hours: int = 168
    quiet_start: time | None = None
    quiet_end: time | None = None
    timezone: str = "UTC"  # the shop's: the local time of customers without a zone of their own


@dataclass(frozen=True)
class SendNow:
    step: SendStep
    template: str
    variant: str | None = None
    subject: str | None = None


@dataclass(frozen=True)
class Skip:
    step: SendStep
    reason: str


@dataclass(frozen=True)
class Defer:
    """Not now (quiet hours): the step falls due again at `until`."""

    step: SendStep
    until: datetime


def decide_step(
    journey: Journey, run: Run, recipient: Recipient, customer_id: str, now: datetime, policy: SendPolicy
) -> SendNow | Skip | Defer:
    """Whether the due send step goes out, waits, or is skipped with a recorded reason."""
    assert run.step_index is not None
    step = journey.send_step(run.step_index)
    if recipient.consent not in journey.consent:
        return Skip(step, f"consent:{recipient.consent or 'unknown'}")
    if not recipient.email:
        return Skip(step, "no_email")
    if recipient.suppressed:
        return Skip(step, f"suppressed:{recipient.suppressed}")
    if journey.marketing:
        if journey.category in recipient.unsubscribed_categories:
            return Skip(step, f"preference:{journey.category}")
        if is_sunset(recipient, now, policy.sunset_days):
            return Skip(step, "sunset")
    if step.if_clicked is not None and not _clicked(run, step.if_clicked):
        return Skip(step, "condition:not_clicked")
    if step.unless_clicked is not None and _clicked(run, step.unless_clicked):
        return Skip(step, "condition:clicked")
    template = step.template
    if step.branches:
        chosen = next((b for b in step.branches if _branch_holds(run, b)), None)
        if chosen is None:
            return Skip(step, "condition:no_branch")
        template = chosen.template
    if step.at is not None or step.on:
        # the run's due time, not the claim's: a step deferred to its moment is due exactly then
        assert run.due_at is not None
        allowed = send_window_start(run.due_at, zone_of(recipient.timezone, policy), step.at, step.on)
        if allowed > run.due_at:
            return Defer(step, allowed)
    if journey.marketing:
        quiet_until = quiet_hours_end(now, recipient.timezone, policy)
        if quiet_until is not None:
            return Defer(step, quiet_until)
        if policy.frequency_cap_count and recipient.recent_marketing_sends >= policy.frequency_cap_count:
            return Skip(step, "frequency_cap")
    variant = assign_variant(customer_id, journey.name, step) if step.variants else None
    if variant is not None:
        return SendNow(step, variant.template, variant.name, variant.subject)
    return SendNow(step, template)


def assign_variant(customer_id: str, journey: str, step: SendStep) -> Variant:
    """Deterministic per customer, journey and step: the same customer always sees the same variant."""
    total = sum(v.weight for v in step.variants)
    digest = hashlib.sha256(f"{journey}:{step.number}:{customer_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") % total
    for variant in step.variants:
        if point < variant.weight:
            return variant
        point -= variant.weight
    return step.variants[-1]


def quiet_hours_end(now: datetime, timezone: str | None, policy: SendPolicy) -> datetime | None:
    """The end of the quiet hours if `now` falls inside them in the customer's zone, else None."""
    start, end = policy.quiet_start, policy.quiet_end
    if start is None or end is None or start == end:
        return None
    zone = zone_of(timezone, policy)
    local = now.astimezone(zone)
    clock = local.time().replace(tzinfo=None)
    inside = start <= clock < end if start < end else (clock >= start or clock < end)
    if not inside:
        return None
    day = local.date() if clock < end else local.date() + timedelta(days=1)
    return local_moment(day, end, zone).astimezone(now.tzinfo)


def zone_of(timezone: str | None, policy: SendPolicy) -> ZoneInfo:
    """The customer's zone, else the shop's (also for a name this machine's zone database lacks)."""
    for name in (timezone, policy.timezone, "UTC"):
        if name:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def local_moment(day: date, at: time, zone: ZoneInfo) -> datetime:
    """`at` on `day` in `zone`, as an instant. A time the clocks skip (spring forward) is taken as if
    they had not moved yet, which lands it as far after the change (02:30 becomes 03:30); a time
    they repeat (fall back) is its first occurrence."""
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def send_window_start(due: datetime, zone: ZoneInfo, at: time | None, on: tuple[int, ...]) -> datetime:
    """The first moment at or after `due` allowed by a step's `at` (local time of day) and `on` (local
    weekdays), in `zone`. With `on` alone, a due time on another day moves to the start of the next
    allowed day."""
    local = due.astimezone(zone)
    for offset in range(8):  # within a week every weekday comes once, and today's time may be past
        day = local.date() + timedelta(days=offset)
        if on and day.weekday() not in on:
            continue
        if at is None:
            return due if offset == 0 else local_moment(day, time(0, 0), zone).astimezone(due.tzinfo)
        moment = local_moment(day, at, zone)
        if moment >= due:
            return moment.astimezone(due.tzinfo)
    raise ValueError(f"no allowed moment in the week after {due}: on={on}")


def is_sunset(recipient: Recipient, now: datetime, sunset_days: int) -> bool:
    """Marketing mail for over a year with no open or click in the last year: stop."""
    window = timedelta(days=sunset_days)
    first = recipient.first_marketing_sent_at
    if first is None or now - first < window:
        return False
    engaged = recipient.last_engagement_at
    return engaged is None or now - engaged >= window


def _branch_holds(run: Run, branch: Branch) -> bool:
    if branch.if_clicked is not None and not _clicked(run, branch.if_clicked):
        return False
    return branch.unless_clicked is None or not _clicked(run, branch.unless_clicked)


def _clicked(run: Run, condition: ClickCondition) -> bool:
    return any(c.get("step") == condition.step and c.get("link") == condition.link for c in run.clicks)


@dataclass(frozen=True)
class SendAudience:
    """What a send's journey version accepts: its consents, whether it is marketing, its category."""

    consent: tuple[str, ...]
    marketing: bool
    category: str

    @classmethod
    def of(cls, journey: Journey) -> SendAudience:
        return cls(journey.consent, journey.marketing, journey.category)


@dataclass(frozen=True)
class SendFacts:
    """The customer and the run as they stand right before an SMTP transaction."""

    to_address: str
    run_status: str | None
    consent: str | None
    email: str | None
    suppressed: str | None
    unsubscribed_categories: tuple[str, ...]
    pending_opt_outs: tuple[str, ...]  # fences: acknowledged, not applied yet ("*": every marketing email)


def still_wanted(audience: SendAudience, facts: SendFacts) -> str | None:
    """None when the email may still go; else why not. Checked again before every attempt, because
    an opt-out, a bounce or an exit may have come in since the step was decided."""
    if facts.run_status in ("exited", "failed"):
        return f"run_ended:{facts.run_status}"
    consent = "opted_out" if "*" in facts.pending_opt_outs else facts.consent
    if consent not in audience.consent:
        return f"consent:{consent or 'unknown'}"
    if not facts.email:
        return "no_email"
    if facts.email.lower() != facts.to_address.lower():
        return "address_changed"
    if facts.suppressed:
        return f"suppressed:{facts.suppressed}"
    if audience.marketing and (audience.category in facts.unsubscribed_categories
                               or audience.category in facts.pending_opt_outs):
        return f"preference:{audience.category}"
    return None
