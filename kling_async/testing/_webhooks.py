"""Callback knobs of the fake: how deliveries misbehave, and Standard Webhooks signing.

The signature is written out here (not taken from the client) so a client that signs or
verifies wrongly disagrees with the fake instead of agreeing with itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
from dataclasses import dataclass

WEBHOOK_PREFIX = "whsec_"


@dataclass(frozen=True, slots=True)
class CallbackFaults:
    """How the fake's callback deliveries misbehave; all draws come from the server's seed.

    ``lost_rate``: a delivery is recorded but never sent. ``duplicate_rate``: a delivery is
    sent a second time (same ``webhook-id``) right after the first. ``delay``: extra wall
    seconds before sending, uniform in ``(low, high)``; different delays reorder deliveries.
    ``reorder_rate``: a non-terminal delivery is held back and sent just after the task's
    next delivery.

    >>> CallbackFaults(lost_rate=0.1, delay=(0.0, 0.2))  # doctest: +SKIP
    """

    lost_rate: float = 0.0
    duplicate_rate: float = 0.0
    delay: tuple[float, float] = (0.0, 0.0)
    reorder_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("lost_rate", "duplicate_rate", "reorder_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if len(self.delay) != 2:
            raise ValueError("delay must be a (low, high) pair of seconds")
        low, high = self.delay
        if not (math.isfinite(high) and 0.0 <= low <= high):
            raise ValueError("delay must satisfy 0 <= low <= high, both finite")


def webhook_key(secret: str) -> bytes:
    """The HMAC key of ``secret``: base64-decoded after ``whsec_``, else its UTF-8 bytes."""
    if not secret:
        raise ValueError("a webhook secret cannot be empty")
    if not secret.startswith(WEBHOOK_PREFIX):
        return secret.encode()
    try:
        return base64.b64decode(secret.removeprefix(WEBHOOK_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret starting with whsec_ must be base64") from None


def signature_with_key(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for an already decoded ``key``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sign_webhook(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value the fake sends, e.g. to forge a callback.

    ``v1,<base64 of HMAC-SHA256(key, f"{msg_id}.{timestamp}.{body}")>`` with the key of
    `webhook_key`; ``body`` is the exact bytes sent.

    >>> sign_webhook("plain", "msg_1", 1700000000, b"{}")  # doctest: +SKIP
    'v1,...'
    """
    return signature_with_key(webhook_key(secret), msg_id, timestamp, body)
