"""The seal on the events topic: "the ingest API validated this message", which the stager can check.

Every event the API publishes went through full validation before it was written. The API puts a
header on its message, `lifecycle-seal: <key id>:<HMAC-SHA256 of the value, first 16 bytes>`, made
with the signing key ring that signs links (LIFECYCLE_SIGNING_KEYS / LIFECYCLE_SIGNING_SECRET). The
stager reads a message whose seal verifies as a plain copy of what the API wrote, without running
the checks again (`lifecycle.trusted.decode_sealed_event`), and any other message (no seal, a key it
does not hold, another writer, a value changed on the way) with every check as before.

Outside the local environment the development secret seals and verifies nothing: a key anyone can
read must not let a message skip validation.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Final

from lifecycle.settings import Settings
from lifecycle.tokens import SigningKeys

SEAL_HEADER: Final = "lifecycle-seal"
_MAC_BYTES: Final = 16
_DEVELOPMENT_SECRET: Final = str(Settings.model_fields["signing_secret"].default)

Headers = Sequence[tuple[str, bytes]]


class Seal:
    """Seals with the ring's signing key; verifies with any key of the ring."""

    def __init__(self, keys: SigningKeys) -> None:
        self._secrets = {key_id.encode(): secret.encode() for key_id, secret in keys.secrets.items()}
        self._signing_id = keys.signing_id.encode()
        self._signing_secret = self._secrets[self._signing_id]

    @classmethod
    def from_settings(cls, settings: Settings) -> Seal | None:
        """The seal of this deployment's key ring; None when it has no key fit to seal with."""
        try:
            keys = SigningKeys.from_settings(settings)
        except ValueError:
            return None
        if settings.environment != "local":
            secrets = {key_id: secret for key_id, secret in keys.secrets.items() if secret != _DEVELOPMENT_SECRET}
            if keys.signing_id not in secrets:
                return None
            keys = SigningKeys(keys.signing_id, secrets)
        return cls(keys)

    def _mac(self, secret: bytes, value: bytes) -> bytes:
        return hmac.digest(secret, value, "sha256")[:_MAC_BYTES]  # by name: OpenSSL's one-shot HMAC

    def headers(self, value: bytes) -> list[tuple[str, bytes]]:
        """The headers that seal `value`."""
        return [(SEAL_HEADER, self._signing_id + b":" + self._mac(self._signing_secret, value))]

    def verifies(self, value: bytes, headers: Headers | None) -> bool:
        """Whether `headers` hold a seal of exactly `value` by a key of the ring."""
        for name, seal in headers or ():
            if name != SEAL_HEADER:
                continue
            key_id, _, mac = seal.partition(b":")  # key ids hold no colon; a MAC may
            secret = self._secrets.get(key_id)
            return secret is not None and len(mac) == _MAC_BYTES and hmac.compare_digest(mac, self._mac(secret, value))
        return False
