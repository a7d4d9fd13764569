"""The seal the ingest API puts on what it validated: only the ring's keys make one, only for the exact value."""

from __future__ import annotations

from lifecycle.seal import SEAL_HEADER, Seal
from lifecycle.settings import Settings
from lifecycle.tokens import SigningKeys

VALUE = b'{"schema_version":1,"event":{"event_id":"e1"}}'


def _seal(*keys: tuple[str, str]) -> Seal:
    return Seal(SigningKeys(keys[0][0], dict(keys)))


def test_a_sealed_value_verifies_and_a_changed_one_does_not() -> None:
    seal = _seal(("k1", "a long secret"))
    headers = seal.headers(VALUE)
    assert [name for name, _ in headers] == [SEAL_HEADER]
    assert seal.verifies(VALUE, headers)
    assert not seal.verifies(VALUE.replace(b"e1", b"e2"), headers)
    assert not seal.verifies(VALUE, [])
    assert not seal.verifies(VALUE, None)
    assert not seal.verifies(VALUE, [("other", headers[0][1])])


def test_a_seal_of_another_key_or_a_damaged_one_does_not_verify() -> None:
    mine, theirs = _seal(("k1", "a long secret")), _seal(("k1", "another secret"))
    assert not mine.verifies(VALUE, theirs.headers(VALUE))
    (name, value), = mine.headers(VALUE)
    for damaged in (value[:-1], value + b"x", b"k2:" + value[3:], b"", b":", value.replace(b"k1:", b"")):
        assert not mine.verifies(VALUE, [(name, damaged)])


def test_every_key_of_the_ring_verifies_while_keys_rotate() -> None:
    old = _seal(("old", "the old secret"))
    rotated = _seal(("new", "the new secret"), ("old", "the old secret"))
    assert rotated.verifies(VALUE, old.headers(VALUE))  # sealed by an API not yet rotated
    assert rotated.headers(VALUE)[0][1].startswith(b"new:")
    assert not old.verifies(VALUE, rotated.headers(VALUE))


def test_a_mac_holding_a_colon_still_verifies() -> None:
    seal = _seal(("k", "s"))
    values = [str(n).encode() for n in range(300)]
    with_colon = [v for v in values if b":" in seal.headers(v)[0][1][2:]]
    assert with_colon, "some MAC among 300 holds the byte 0x3a"
    assert all(seal.verifies(v, seal.headers(v)) for v in with_colon)


def test_the_development_secret_seals_nothing_outside_a_local_stack() -> None:
    assert Seal.from_settings(Settings(environment="production")) is None
    local = Seal.from_settings(Settings(environment="local"))
    assert local is not None and local.verifies(VALUE, local.headers(VALUE))
    own = Seal.from_settings(Settings(environment="production", signing_secret="an operator's own secret"))
    assert own is not None and own.verifies(VALUE, own.headers(VALUE))


def test_a_retired_development_secret_left_in_the_ring_verifies_nothing_in_production() -> None:
    development = Seal.from_settings(Settings(environment="local"))
    assert development is not None
    production = Seal.from_settings(Settings(environment="production", signing_keys="k1:an operator's own secret"))
    assert production is not None
    assert not production.verifies(VALUE, development.headers(VALUE))
