"""Who is looking at a page: the service's bearer tokens, presented in a header or in the session cookie.

The session cookie holds the token itself, HttpOnly (no script reads it),
SameSite=Strict (no other site's page sends it) and Secure over HTTPS.  No
session table: a revoked token is refused at the next page, by every server
of the database, exactly as on the API.  The cost is that the cookie is as
strong as the token, so it lives no longer than the browser session.

A form that writes carries a CSRF token: an HMAC of the session's secret,
which a page of another origin can neither read nor compute.  A request
authenticated by an `Authorization` header needs none: a browser does not
send that header across sites on its own.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, NamedTuple

from litestar.connection import ASGIConnection

from vmledger.service.tokens import Role, Token

__all__ = ["COOKIE", "Viewer", "viewer", "csrf_token", "csrf_ok", "session_cookie"]

COOKIE = "vmledger_session"
_CSRF_LABEL = b"vmledger console form"


class Viewer(NamedTuple):
    """A signed-in caller: the token, its secret, and whether it came in the session cookie."""

    token: Token
    secret: str
    by_cookie: bool

    @property
    def operates(self) -> bool:
        """Tell whether the token may write (operator or admin)."""
        return self.token.role.allows(Role.OPERATOR)

    @property
    def csrf(self) -> str:
        """Return the CSRF token of this session's forms."""
        return csrf_token(self.secret)


def csrf_token(secret: str) -> str:
    """Return the CSRF token of the session whose token is `secret`."""
    return hmac.new(secret.encode("utf-8", "surrogatepass"), _CSRF_LABEL, hashlib.sha256).hexdigest()


def csrf_ok(who: Viewer, presented: Any) -> bool:
    """Tell whether a form's CSRF field is this session's (always, for a header-authenticated request)."""
    if not who.by_cookie:
        return True
    return isinstance(presented, str) and hmac.compare_digest(presented, who.csrf)


async def viewer(connection: ASGIConnection, tokens: Any) -> Viewer | None:
    """Return who presents a valid token, in the `Authorization: Bearer` header or the session cookie; else None.

    A valid token's name is recorded as the request's principal, as the API does.
    """
    scheme, _, secret = connection.headers.get("authorization", "").partition(" ")
    by_cookie = not secret.strip()
    if by_cookie:
        secret = connection.cookies.get(COOKIE, "")
    elif scheme.lower() != "bearer":
        return None
    secret = secret.strip()
    token = await tokens.find(secret) if secret else None
    if token is None:
        return None
    connection.scope.setdefault("vmledger", {})["principal"] = token.name
    return Viewer(token=token, secret=secret, by_cookie=by_cookie)


def session_cookie(secret: str, *, path: str, secure: bool) -> str:
    """Return the Set-Cookie value of a session (an empty `secret` ends it)."""
    parts = [f"{COOKIE}={secret}", f"Path={path}", "HttpOnly", "SameSite=Strict"]
    if not secret:
        parts.append("Max-Age=0")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)
