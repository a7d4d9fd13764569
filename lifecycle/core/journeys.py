"""Journey definitions and the journey engine (pure).

A journey is data: an entry trigger with filters, steps of `wait` and `send`,
exit triggers and a re-entry rule. The engine turns a trigger or a due step
into actions; the dispatcher executes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from lifecycle.core.triggers import Trigger, TriggerType

Reentry = Literal["while_inactive", "restart", "once", "once_per_key"]


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
class SendStep:
    template: str
    number: int  # counted over send steps, from 1
    if_clicked: ClickCondition | None = None
    unless_clicked: ClickCondition | None = None


Step = WaitStep | SendStep


@dataclass(frozen=True)
class Journey:
    name: str
    entry: TriggerMatch
    steps: tuple[Step, ...]
    exits: tuple[TriggerMatch, ...] = ()
    reentry: Reentry = "while_inactive"
    reentry_key: str | None = None  # data field naming the period for once_per_key
    consent: tuple[str, ...] = ("opted_in",)
    marketing: bool = True
    description: str = ""

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
        step = self.steps[index]
        if not isinstance(step, SendStep):
            raise ValueError(f"step {index} of {self.name} is not a send step")
        return step


@dataclass
class Run:
    run_id: int
    journey: str
    status: str  # active | completed | exited
    entry_key: str
    step_index: int | None
    due_at: datetime | None
    started_at: datetime
    context: dict[str, Any] = field(default_factory=dict)
    clicks: list[dict[str, Any]] = field(default_factory=list)


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


def on_trigger(journeys: list[Journey], runs: list[Run], trigger: Trigger) -> list[Action]:
    """What a trigger does to one customer's runs. `runs` holds all of them, ended ones too."""
    actions: list[Action] = []
    by_name = {j.name: j for j in journeys}
    active = {r.journey: r for r in runs if r.status == "active"}

    if trigger.type is TriggerType.ENGAGEMENT and trigger.data.get("kind") == "clicked":
        target = _latest_run(runs, str(trigger.data.get("journey")))
        if target is not None and trigger.data.get("step") is not None:
            actions.append(RecordClick(target.run_id, int(trigger.data["step"]), str(trigger.data.get("link"))))

    exited: set[str] = set()
    for name, run in active.items():
        journey = by_name.get(name)
        if journey is not None and any(rule.matches(trigger) for rule in journey.exits):
            actions.append(ExitRun(run.run_id, f"exit:{trigger.type.value}"))
            exited.add(name)

    if trigger.backfill:
        return actions  # history starts no journey
    for journey in journeys:
        if not journey.entry.matches(trigger):
            continue
        entry_key = _entry_key(journey, trigger)
        running = active.get(journey.name) if journey.name not in exited else None
        if journey.reentry == "once" and any(r.journey == journey.name for r in runs):
            continue
        if journey.reentry == "once_per_key" and any(
            r.journey == journey.name and r.entry_key == entry_key for r in runs
        ):
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


@dataclass(frozen=True)
class SendNow:
    step: SendStep


@dataclass(frozen=True)
class Skip:
    step: SendStep
    reason: str


def decide_step(
    journey: Journey, run: Run, recipient: Recipient, now: datetime, sunset_days: int
) -> SendNow | Skip:
    """Whether the due send step goes out, or is skipped with a recorded reason."""
    assert run.step_index is not None
    step = journey.send_step(run.step_index)
    if recipient.consent not in journey.consent:
        return Skip(step, f"consent:{recipient.consent or 'unknown'}")
    if not recipient.email:
        return Skip(step, "no_email")
    if recipient.suppressed:
        return Skip(step, f"suppressed:{recipient.suppressed}")
    if journey.marketing and is_sunset(recipient, now, sunset_days):
        return Skip(step, "sunset")
    if step.if_clicked is not None and not _clicked(run, step.if_clicked):
        return Skip(step, "condition:not_clicked")
    if step.unless_clicked is not None and _clicked(run, step.unless_clicked):
        return Skip(step, "condition:clicked")
    return SendNow(step)


def is_sunset(recipient: Recipient, now: datetime, sunset_days: int) -> bool:
    """Marketing mail for over a year with no open or click in the last year: stop."""
    window = timedelta(days=sunset_days)
    first = recipient.first_marketing_sent_at
    if first is None or now - first < window:
        return False
    engaged = recipient.last_engagement_at
    return engaged is None or now - engaged >= window


def _clicked(run: Run, condition: ClickCondition) -> bool:
    return any(c.get("step") == condition.step and c.get("link") == condition.link for c in run.clicks)
