"""The local stack's Kafka: what it hands to Kafka's own tools."""

from __future__ import annotations

import uuid

import pytest

from devstack import kafka


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0xF8: the first base64 digit is "-" (62); the storage tool took such an id for an option
    made = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x12" + bytes(15))])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(made))
    cluster_id = kafka.new_cluster_id()
    assert cluster_id == "EgAAAAAAAAAAAAAAAAAAAA"
    monkeypatch.undo()
    assert all(not kafka.new_cluster_id().startswith("-") for _ in range(500))
