"""`lifecycle dlq list|replay`: the dead-letter topic, read and replayed.

A dead letter is an event or a trigger that could not be read, or whose handling failed every
attempt (lifecycle/consuming.py). Each is named `<partition>:<offset>` in the dead-letter topic.
Replaying one publishes its original bytes to its original topic with its original key: once the
cause is fixed (a new version, a corrected journey), it goes through the normal path; an event
already applied meanwhile is recognised by its id and changes nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from lifecycle.consuming import DeadLetter
from lifecycle.kafka import make_producer, read_topic
from lifecycle.settings import Settings

_SELECTOR = re.compile(r"(\d+):(\d+)")


class DlqError(Exception):
    """A request about the dead-letter topic that cannot be done (the message says why)."""


@dataclass(frozen=True)
class Entry:
    partition: int
    offset: int
    letter: DeadLetter | None  # None: the record is not a dead letter of ours
    raw: bytes

    @property
    def name(self) -> str:
        return f"{self.partition}:{self.offset}"

    def as_json(self) -> dict[str, object]:
        letter = self.letter
        if letter is None:
            return {"id": self.name, "unreadable": self.raw[:200].decode("utf-8", "replace")}
        return {"id": self.name, "service": letter.service, "topic": letter.topic, "partition": letter.partition,
                "offset": letter.offset, "key": letter.key.decode("utf-8", "replace") if letter.key else None,
                "error": letter.error, "attempts": letter.attempts, "failed_at": letter.failed_at,
                "value": letter.value.decode("utf-8", "replace")}


async def read_entries(settings: Settings) -> list[Entry]:
    """Every record of the dead-letter topic, oldest first per partition (none when no service has created
    the topic yet: nothing ever failed)."""
    entries: list[Entry] = []
    for record in await read_topic(settings, settings.dlq_topic):
        raw = record.value or b""
        try:
            letter: DeadLetter | None = DeadLetter.from_message(raw)
        except (ValueError, KeyError, TypeError):
            letter = None
        entries.append(Entry(record.partition, record.offset, letter, raw))
    return sorted(entries, key=lambda e: (e.letter.failed_at if e.letter else "", e.partition, e.offset))


def render(entries: list[Entry], as_json: bool) -> str:
    if as_json:
        return json.dumps([e.as_json() for e in entries], indent=2, ensure_ascii=False)
    if not entries:
        return "no dead letters"
    lines = []
    for entry in entries:
        letter = entry.letter
        if letter is None:
            lines.append(f"{entry.name:<8} (not a dead letter of ours)")
            continue
        preview = letter.value.decode("utf-8", "replace").replace("\n", " ")
        lines.append(f"{entry.name:<8} {letter.failed_at}  {letter.service:<10} from {letter.topic}"
                     f" {letter.partition}@{letter.offset}, {letter.attempts} attempt(s)\n"
                     f"         error: {letter.error}\n         value: {preview[:160]}")
    return "\n".join(lines)


async def replay(settings: Settings, selectors: list[str], everything: bool) -> list[Entry]:
    """Publish the chosen dead letters to their original topics again; returns those replayed."""
    wanted: set[tuple[int, int]] = set()
    for selector in selectors:
        match = _SELECTOR.fullmatch(selector.strip())
        if match is None:
            raise DlqError(f"{selector!r} is not a dead letter id: use <partition>:<offset> as `lifecycle dlq list`"
                           " shows them")
        wanted.add((int(match.group(1)), int(match.group(2))))
    entries = await read_entries(settings)
    chosen = [e for e in entries if everything or (e.partition, e.offset) in wanted]
    missing = wanted - {(e.partition, e.offset) for e in chosen}
    if missing:
        raise DlqError("no dead letter " + ", ".join(f"{p}:{o}" for p, o in sorted(missing)))
    unusable = [e.name for e in chosen if e.letter is None]
    if unusable:
        raise DlqError(f"not dead letters of ours, cannot replay: {', '.join(unusable)}")
    producer = make_producer(settings)
    await producer.start()
    try:
        for entry in chosen:
            assert entry.letter is not None
            await (await producer.send(entry.letter.topic, value=entry.letter.value, key=entry.letter.key))
    finally:
        await producer.stop()
    return chosen
