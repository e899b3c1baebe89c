"""Credentials: a static bearer key, or short-lived HS256 tokens made from an access key pair.

Neither class ever shows a secret: reprs name the kind of credential and at most the last
four characters of the (public) access key, and `secrets()` lists every value the transport
must scrub from text it did not write itself (server answers quoted in errors).
"""

from __future__ import annotations

import warnings
from typing import Protocol

import attrs
import jwt

from ._clock import Clock, SystemClock

__all__ = ["Auth", "BearerAuth", "JWTAuth"]

TOKEN_LIFETIME = 1800
RENEW_BEFORE = 60
NOT_BEFORE_SKEW = 5

#: What PyJWT (2.11 and later) warns with when an HMAC key is shorter than 32 bytes.
_SHORT_KEY_WARNING: type[Warning] = getattr(jwt, "InsecureKeyLengthWarning", UserWarning)


class Auth(Protocol):
    """What the transport needs from a credential."""

    def authorization(self) -> str:
        """The value of the ``Authorization`` header for the next request."""
        ...

    def invalidate(self) -> None:
        """Forget any cached token: the server said it is expired or not yet valid."""
        ...

    def secrets(self) -> tuple[str, ...]:
        """Every secret value that must never appear in text shown to a person."""
        ...


@attrs.define
class BearerAuth:
    """A static API key sent as ``Authorization: Bearer <key>``.

    >>> BearerAuth("sk-live-123")
    BearerAuth(api_key=<hidden>)
    """

    api_key: str = attrs.field(repr=False, validator=attrs.validators.min_len(1))

    def authorization(self) -> str:
        return f"Bearer {self.api_key}"

    def invalidate(self) -> None:
        """A static key cannot be renewed."""

    def secrets(self) -> tuple[str, ...]:
        return (self.api_key,)

    def __repr__(self) -> str:
        return "BearerAuth(api_key=<hidden>)"


@attrs.define
class JWTAuth:
    """The official API's signed tokens: HS256 over ``{iss, exp, nbf}`` with the secret key.

    A token lives `TOKEN_LIFETIME` seconds (``nbf`` is set five seconds early to absorb clock
    skew) and is reused until a minute before it expires, so a busy client signs about one
    token per half hour, not one per request.

    >>> JWTAuth("AKexample1234", "secret")
    JWTAuth(access_key='…1234', secret_key=<hidden>)
    """

    access_key: str = attrs.field(validator=attrs.validators.min_len(1))
    secret_key: str = attrs.field(repr=False, validator=attrs.validators.min_len(1))
    clock: Clock = attrs.field(factory=SystemClock, repr=False)
    _token: str | None = attrs.field(default=None, init=False, repr=False)
    _renew_at: float = attrs.field(default=0.0, init=False, repr=False)

    def authorization(self) -> str:
        return f"Bearer {self.token()}"

    def token(self) -> str:
        """The current token, signed anew when missing or within a minute of expiry."""
        now = self.clock.time()
        if self._token is None or now >= self._renew_at:
            issued = int(now)
            claims = {
                "iss": self.access_key,
                "exp": issued + TOKEN_LIFETIME,
                "nbf": issued - NOT_BEFORE_SKEW,
            }
            self._token = _sign(claims, self.secret_key)
            self._renew_at = issued + TOKEN_LIFETIME - RENEW_BEFORE
        return self._token

    def invalidate(self) -> None:
        self._token = None

    def secrets(self) -> tuple[str, ...]:
        current = (self._token,) if self._token else ()
        return (self.secret_key, *current)

    def __repr__(self) -> str:
        return f"JWTAuth(access_key='…{self.access_key[-4:]}', secret_key=<hidden>)"


def _sign(claims: dict[str, object], secret_key: str) -> str:
    """An HS256 token over `claims`, whatever the length of the key.

    The key's strength is the issuer's choice (Kling's own keys are long; a fake server's or a
    test's may be short), and a user cannot pick another, so PyJWT's key-length warning would
    only print two lines nobody can act on. It is silenced here, around this one call.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _SHORT_KEY_WARNING)
        return jwt.encode(claims, secret_key, algorithm="HS256")
