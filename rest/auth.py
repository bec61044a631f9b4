"""HTTP Basic authentication: account SID + auth token, or API key SID + secret."""

from __future__ import annotations

import base64
import binascii
import hmac

from aiohttp import web
from aiohttp.typedefs import Middleware

from sfu.credentials import Credentials

from sfu.errors import AUTHENTICATION_FAILED

from .errors import Handler, error_response


def authorized(header: str | None, credentials: Credentials) -> bool:
    """True when ``header`` carries one of the server's two username/password pairs."""
    if not header:
        return False
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    username, sep, password = decoded.partition(":")
    if not sep:
        return False
    pairs = ((credentials.account_sid, credentials.auth_token), (credentials.api_key_sid, credentials.api_key_secret))
    matched = False
    for expected_user, expected_password in pairs:  # compare both pairs: no timing shortcut
        user_ok = hmac.compare_digest(username.encode(), expected_user.encode())
        password_ok = hmac.compare_digest(password.encode(), expected_password.encode())
        matched |= user_ok and password_ok
    return matched


def auth_middleware(credentials: Credentials) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not authorized(request.headers.get("Authorization"), credentials):
            return error_response(
                401, AUTHENTICATION_FAILED, "Authenticate", headers={"WWW-Authenticate": 'Basic realm="Twilio API"'}
            )
        return await handler(request)

    return middleware
