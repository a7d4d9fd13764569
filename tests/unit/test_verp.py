"""lifecycle/verp.py: each send's signed bounce address, read back whatever an MTA did to its case."""

from __future__ import annotations

import re

import pytest

from lifecycle.settings import Settings
from lifecycle.tokens import SigningKeys
from lifecycle.verp import bounce_address, read_bounce_address

KEYS = SigningKeys("k2", {"k2": "second-secret", "k1": "first-secret"})
DOMAIN = "bounces.shop.example"


def test_an_address_names_its_send_fits_a_local_part_and_survives_case_changes() -> None:
    for send_id in (1, 42, 2**63 - 1):
        address = bounce_address(KEYS, send_id, DOMAIN)
        local, _, domain = address.rpartition("@")
        assert domain == DOMAIN and len(local) <= 64
        assert re.fullmatch(r"bounces\+[0-9]+-[0-9a-f]{24}", local)
        assert read_bounce_address(KEYS, address, DOMAIN) == send_id
        assert read_bounce_address(KEYS, address.upper(), DOMAIN) == send_id
        assert read_bounce_address(KEYS, f"<{address}>", DOMAIN.upper()) == send_id


def test_signing_is_deterministic_and_every_key_of_the_ring_verifies() -> None:
    assert bounce_address(KEYS, 7, DOMAIN) == bounce_address(KEYS, 7, DOMAIN)
    older = bounce_address(SigningKeys("k1", {"k1": "first-secret"}), 7, DOMAIN)
    assert older != bounce_address(KEYS, 7, DOMAIN)
    assert read_bounce_address(KEYS, older, DOMAIN) == 7  # signed before the rotation, still in the ring
    retired = bounce_address(SigningKeys("k0", {"k0": "retired-secret"}), 7, DOMAIN)
    assert read_bounce_address(KEYS, retired, DOMAIN) is None


@pytest.mark.parametrize("address", [
    "bounces@bounces.shop.example",  # unsigned
    "bounces+7@bounces.shop.example",
    "bounces+7-000000000000000000000000@bounces.shop.example",  # a MAC nobody made
    "bounces+8-{mac}@bounces.shop.example",  # another send's MAC
    "bounces+07-{mac}@bounces.shop.example",  # the same number spelled otherwise
    "bounces+7-{mac}@elsewhere.example",  # another domain
    "bounces+7-{mac}x@bounces.shop.example",
    "postmaster@bounces.shop.example",
    "no-at-sign",
    "",
])
def test_anything_else_names_no_send(address: str) -> None:
    mac = bounce_address(KEYS, 7, DOMAIN).split("-")[1].split("@")[0]
    assert read_bounce_address(KEYS, address.format(mac=mac), DOMAIN) is None


def test_the_bounce_domain_defaults_to_that_of_the_sender() -> None:
    assert Settings(mail_from="Shop <Hello@Shop.Example>").bounce_domain_name == "shop.example"
    assert Settings(bounce_domain="Bounces.Shop.Example").bounce_domain_name == "bounces.shop.example"
    with pytest.raises(ValueError, match="expected a domain name"):
        Settings(bounce_domain="not a domain")
