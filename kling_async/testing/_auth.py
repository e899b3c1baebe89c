"""Authorization checks of both dialects, with a hand-written HS256 JWT verifier.

The verifier is written out here on purpose: the client signs its tokens with a JWT library,
and a fake that shared that library could not catch a token the real server would refuse.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any, TypeGuard

from ._answers import Answer, kling_error, openai_error

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """Why the official API refused the Authorization header (HTTP 401)."""

    code: int
    message: str


_MISSING = AuthFailure(1001, "Authorization is empty")
_INVALID = AuthFailure(1002, "Authorization is invalid")
_NOT_YET = AuthFailure(1003, "Authorization is not active")
_EXPIRED = AuthFailure(1004, "Authorization has expired")


@dataclass(frozen=True, slots=True)
class OfficialCredentials:
    """What the official dialect accepts: a static key and/or an access/secret key pair."""

    api_key: str | None
    access_key: str | None
    secret_key: str | None

    @property
    def enabled(self) -> bool:
        """False when nothing is configured, which turns auth off."""
        return self.api_key is not None or self.access_key is not None


def bearer_token(header: str | None) -> str | None:
    """The token of a ``Bearer`` header, ``""`` for another scheme, None when absent."""
    if header is None or not header.strip():
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def check_gateway(header: str | None, api_key: str | None) -> bool:
    """Whether a gateway accepts this Authorization header (``api_key=None``: any)."""
    if api_key is None:
        return True
    token = bearer_token(header)
    return bool(token) and _same(token or "", api_key)


def check_official(
    header: str | None, credentials: OfficialCredentials, now: float
) -> AuthFailure | None:
    """None when the official API accepts the header, else the failure it answers."""
    if not credentials.enabled:
        return None
    token = bearer_token(header)
    if token is None:
        return _MISSING
    if credentials.api_key is not None and _same(token, credentials.api_key):
        return None
    if credentials.access_key is None or credentials.secret_key is None:
        return _INVALID
    claims = verify_hs256(token, credentials.secret_key)
    if claims is None:
        return _INVALID
    return _check_claims(claims, credentials.access_key, now)


def auth_refusal(
    header: str | None, credentials: OfficialCredentials, gateway: bool, now: float
) -> Answer | None:
    """The answer refusing this Authorization header in a dialect, or None to go on."""
    if gateway:
        if check_gateway(header, credentials.api_key):
            return None
        return openai_error(401, "Invalid API key provided", "invalid_request_error")
    failure = check_official(header, credentials, now)
    if failure is None:
        return None
    # Real 401 bodies carry no request_id.
    return kling_error(401, failure.code, failure.message, None)


def _check_claims(claims: dict[str, Any], access_key: str, now: float) -> AuthFailure | None:
    iss, exp, nbf = claims.get("iss"), claims.get("exp"), claims.get("nbf")
    if not isinstance(iss, str) or not _same(iss, access_key):
        return _INVALID
    if not _is_int(exp) or not _is_int(nbf):
        return _INVALID
    if nbf > now:
        return _NOT_YET
    if exp <= now:
        return _EXPIRED
    return None


def _is_int(value: object) -> TypeGuard[int]:
    # JSON true/false decode to bool, a subclass of int, and must not pass for a timestamp.
    return isinstance(value, int) and not isinstance(value, bool)


def _b64url_decode(part: str) -> bytes | None:
    # urlsafe_b64decode silently skips foreign characters, so the alphabet is checked first.
    if not _B64URL.fullmatch(part):
        return None
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        return None


def _json_object(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def verify_hs256(token: str, secret: str) -> dict[str, Any] | None:
    """The claims of an HS256 JWT signed with ``secret``, or None if anything is wrong."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    header = _json_object(_b64url_decode(parts[0]))
    if header is None or header.get("alg") != "HS256" or header.get("typ", "JWT") != "JWT":
        return None
    signature = _b64url_decode(parts[2])
    signing_input = f"{parts[0]}.{parts[1]}".encode()
    expected = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    if signature is None or not hmac.compare_digest(signature, expected):
        return None
    return _json_object(_b64url_decode(parts[1]))
