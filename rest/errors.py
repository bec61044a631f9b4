"""Twilio's REST error body and the middleware that turns every failure into one.

Twilio answers errors as ``{"code", "message", "more_info", "status"}`` and nothing else: a
``type`` or ``title`` field would make the helper library raise a different exception class.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from sfu.errors import AUTHENTICATION_FAILED, INTERNAL_ERROR, INVALID_PARAMETER, METHOD_NOT_ALLOWED, NOT_FOUND, SERVICE_UNAVAILABLE

logger = logging.getLogger(__name__)



class RestError(Exception):
    """A request the API refuses: HTTP ``status`` with Twilio error ``code``."""

    def __init__(self, status: int, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers

    def response(self) -> web.Response:
        return error_response(self.status, self.code, self.message, self.headers)


def error_response(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status}
    return web.json_response(body, status=status, headers=headers)


def invalid(message: str, code: int = INVALID_PARAMETER) -> RestError:
    """A 400 for a parameter the API cannot accept."""
    return RestError(400, code, message)


def store_unavailable() -> RestError:
    """A 503 while the store refuses writes: what was just changed is not durable yet (it is
    kept and stored once the store recovers), so the API cannot answer from it."""
    return RestError(
        503, SERVICE_UNAVAILABLE, "Service unavailable: records cannot be stored right now, try again later", {"Retry-After": "5"}
    )


def not_found(path: str) -> RestError:
    return RestError(404, NOT_FOUND, f"The requested resource {path} was not found")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# aiohttp's own refusals (body too large, bad request line...) in Twilio's form.
_HTTP_CODES = {404: NOT_FOUND, 405: METHOD_NOT_ALLOWED, 401: AUTHENTICATION_FAILED}


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RestError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, _HTTP_CODES.get(exc.status, INVALID_PARAMETER), exc.reason)
    except Exception:
        logger.exception("REST %s %s failed", request.method, request.path)
        return error_response(500, INTERNAL_ERROR, "Internal server error")
