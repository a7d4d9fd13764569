"""Comparing what reached the sink with what the acknowledged events require."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from devstack.chaos.faults import FaultRecord
from devstack.chaos.sink import Arrival
from devstack.chaos.workload import Customer

COUNTERS = ("expected", "delivered", "duplicates", "ambiguous", "lost", "unconsented", "unexpected", "stuck")


@dataclass
class Verdict:
    expected: int = 0
    delivered: int = 0
    duplicates: int = 0
    ambiguous: int = 0
    windows: int = 0  # messages whose sender died before it could have seen their 250: each may come twice
    lost: int = 0
    unconsented: int = 0
    unexpected: int = 0
    stuck: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    recoveries: list[float] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)  # one line per broken promise, for the log
    notes: list[str] = field(default_factory=list)  # what happened in the run (faults), for the log

    def add(self, other: Verdict) -> None:
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.windows += other.windows
        self.faults.update(other.faults)
        self.recoveries.extend(other.recoveries)
        self.findings.extend(other.findings)

    @property
    def broken(self) -> bool:
        return any(getattr(self, name) for name in COUNTERS if name not in ("expected", "delivered", "ambiguous"))

    def recovery_p99(self) -> float:
        if not self.recoveries:
            return 0.0
        ordered = sorted(self.recoveries)
        return round(ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)], 2)

    def line(self) -> str:
        faults = ", ".join(f"{kind} {count}" for kind, count in sorted(self.faults.items()))
        return (f"expected {self.expected}, delivered {self.delivered}, duplicates {self.duplicates}, "
                f"ambiguous {self.ambiguous} (of {self.windows} window(s)), lost {self.lost}, "
                f"unconsented {self.unconsented}, "
                f"unexpected {self.unexpected}, stuck {self.stuck}, recovery p99 {self.recovery_p99():.1f} s"
                f" | faults: {faults}")

    def as_json(self, runs: int) -> dict[str, Any]:
        return {"runs": runs, "faults": dict(sorted(self.faults.items())), "expected": self.expected,
                "delivered": self.delivered, "duplicates": self.duplicates, "ambiguous": self.ambiguous,
                "ambiguous_windows": self.windows, "lost": self.lost, "unconsented": self.unconsented,
                "unexpected": self.unexpected,
                "stuck": self.stuck, "recovery_p99_s": self.recovery_p99()}


def judge(customers: list[Customer], arrivals: list[Arrival], faults: list[FaultRecord],
          killed_message_ids: list[str], stuck: int) -> Verdict:
    verdict = Verdict(stuck=stuck, windows=len(killed_message_ids))
    by_address = {c.email: c for c in customers}
    mine = [a for a in arrivals if a.to in by_address]
    verdict.delivered = len(mine)
    ambiguous_left = Counter(killed_message_ids)  # each such message may come once more
    for customer in customers:
        received: dict[tuple[str, int], list[Arrival]] = defaultdict(list)
        for arrival in mine:
            if arrival.to == customer.email:
                received[(arrival.journey, arrival.step)].append(arrival)
        verdict.expected += len(customer.required)
        for key in sorted(customer.required - set(received)):
            verdict.lost += 1
            verdict.findings.append(f"lost: {customer.customer_id} ({customer.story}) never got {key[0]} {key[1]}")
        for link in customer.lost_links:
            verdict.notes.append(f"note: {customer.customer_id} ({customer.story}) waited in vain for {link}")
        for key, copies in sorted(received.items()):
            copies.sort(key=lambda a: a.at)
            first_of: dict[str, Arrival] = {}
            for copy in copies:
                if customer.forbids(copy):
                    verdict.unconsented += 1
                    verdict.findings.append(
                        f"unconsented: {customer.customer_id} ({customer.story}) got {key[0]} {key[1]} "
                        f"{copy.at - (customer.opted_out_at or min(customer.left.values())):.1f} s after opting out")
                    continue
                if copy.message_id in first_of:
                    if ambiguous_left[copy.message_id] > 0:
                        ambiguous_left[copy.message_id] -= 1
                        verdict.ambiguous += 1
                    else:
                        verdict.duplicates += 1
                        verdict.findings.append(f"duplicate: {customer.customer_id} got {key[0]} {key[1]} again "
                                                f"({copy.message_id})")
                    continue
                if first_of:  # another run of the same step: a second message, not a copy
                    verdict.duplicates += 1
                    verdict.findings.append(f"duplicate: {customer.customer_id} got {key[0]} {key[1]} twice "
                                            f"({', '.join(first_of)} and {copy.message_id})")
                    first_of[copy.message_id] = copy
                    continue
                first_of[copy.message_id] = copy
                if key not in customer.required and key not in customer.optional:
                    verdict.unexpected += 1
                    verdict.findings.append(f"unexpected: {customer.customer_id} ({customer.story}) got {key[0]} "
                                            f"{key[1]}")
    due_of = {(c.email, key): due for c in customers for key, due in c.due.items()}
    for fault in faults:
        if not fault.injected:
            continue
        verdict.faults[fault.kind] += 1
        # recovery: from the end of the fault to the first email sent of those already due by then
        owed = [a.at for a in mine if a.at >= fault.ended
                and due_of.get((a.to, (a.journey, a.step)), float("inf")) <= fault.ended]
        if owed:
            verdict.recoveries.append(min(owed) - fault.ended)
    return verdict
