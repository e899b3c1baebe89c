"""Credentials: bearer keys and HS256 tokens, their caching, renewal and secrecy."""

from __future__ import annotations

import jwt
import pytest

from kling_async import BearerAuth, JWTAuth
from kling_async._clock import FakeClock
from kling_async.testing._auth import verify_hs256

SECRET = "sk-secret-0123456789abcdefghijklmnop"  # 32+ bytes, like real secret keys


def _claims(auth: JWTAuth, secret: str = SECRET) -> dict[str, object]:
    token = auth.token()
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "HS256", "typ": "JWT"}
    claims: dict[str, object] = jwt.decode(
        token, secret, algorithms=["HS256"], options={"verify_exp": False, "verify_nbf": False}
    )
    return claims


def test_token_claims() -> None:
    """iss is the access key, exp now+1800, nbf now-5, integer seconds."""
    clock = FakeClock(start=1_800_000_000.7)
    claims = _claims(JWTAuth("ak-1", SECRET, clock=clock))
    assert claims == {"iss": "ak-1", "exp": 1_800_001_800, "nbf": 1_799_999_995}


def test_token_is_cached_until_a_minute_before_expiry() -> None:
    """The same token is reused for 29 minutes, then a new one is signed."""
    clock = FakeClock()
    auth = JWTAuth("ak-1", SECRET, clock=clock)
    first = auth.token()
    clock.advance(1800 - 61)
    assert auth.token() == first
    clock.advance(2)
    renewed = auth.token()
    assert renewed != first
    assert _claims(auth)["exp"] == int(clock.time()) + 1800


def test_invalidate_forces_a_new_token() -> None:
    """After the server says the token expired, the next request gets a fresh one."""
    clock = FakeClock()
    auth = JWTAuth("ak-1", SECRET, clock=clock)
    first = auth.token()
    clock.advance(1)
    auth.invalidate()
    assert auth.token() != first


def test_a_short_secret_key_signs_without_a_warning() -> None:
    """A key shorter than 32 bytes (a fake server's, say) signs a valid token, silently."""
    clock = FakeClock(start=1_800_000_000)
    token = JWTAuth("ak-1", "short", clock=clock).token()  # a warning would fail the test
    claims = verify_hs256(token, "short")
    assert claims == {"iss": "ak-1", "exp": 1_800_001_800, "nbf": 1_799_999_995}


def test_the_key_length_warning_is_silenced_only_while_signing() -> None:
    """The application's own short-key signatures still warn: no filter is left behind."""
    JWTAuth("ak-1", "short").token()
    with pytest.warns(jwt.InsecureKeyLengthWarning):
        jwt.encode({"iss": "app"}, "short", algorithm="HS256")


def test_bearer_header() -> None:
    """A static key goes out as a bearer token."""
    assert BearerAuth("key-1").authorization() == "Bearer key-1"


def test_reprs_hide_secrets() -> None:
    """Neither repr nor str shows a key, a secret or a token."""
    jwt_auth = JWTAuth("AK-visible-ABCD", "sk-very-secret-0123456789abcdefghij")
    token = jwt_auth.token()
    bearer = BearerAuth("sk-live-key")
    shown = repr(jwt_auth) + str(jwt_auth) + repr(bearer) + str(bearer)
    for secret in ("sk-very-secret-0123456789abcdefghij", token, "sk-live-key", "AK-visible"):
        assert secret not in shown
    assert "ABCD" in repr(jwt_auth)


def test_secrets_lists_what_to_scrub() -> None:
    """The transport is told every secret value, the live token included."""
    auth = JWTAuth("ak", SECRET)
    token = auth.token()
    assert set(auth.secrets()) == {SECRET, token}
    assert BearerAuth("k").secrets() == ("k",)
