"""Errors the server answers with: one JSON shape, ``{"error": {"type", "message"}}``, and a status.

Library errors a request can cause (``indexing.errors.EmbedxIndexError``, encoder errors)
become 400; anything else unexpected is a bug and becomes a logged 500 that never shows a
traceback to the caller.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException


class ApiError(HTTPException):
    """An error with a status code, a short machine-readable type and a message for people.

    Derives from Starlette's ``HTTPException`` so FastAPI re-raises it unchanged even from
    inside its own body parsing (the body-size limit trips there).
    """

    def __init__(self, status: int, type: str, message: str, headers: dict | None = None):
        super().__init__(status_code=status, detail=message, headers=headers)
        self.type = type
        self.message = message


def bad_request(message: str, type: str = "invalid_input") -> ApiError:
    return ApiError(400, type, message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def incompatible(message: str) -> ApiError:
    return ApiError(409, "incompatible_encoder", message)


class PayloadTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__(413, "payload_too_large", f"request body is larger than {limit} bytes")


class Unauthorized(ApiError):
    def __init__(self):
        super().__init__(401, "unauthorized", "missing or wrong API key (send it as 'X-API-Key: KEY' "
                                              "or 'Authorization: Bearer KEY')",
                         headers={"WWW-Authenticate": 'Bearer realm="embedx"'})


class Overloaded(ApiError):
    def __init__(self, limit: int):
        super().__init__(503, "overloaded", f"the server is busy ({limit} searches in flight); retry shortly",
                         headers={"Retry-After": "1"})


class Timeout(ApiError):
    def __init__(self, seconds: float):
        super().__init__(504, "timeout", f"the request took longer than {seconds:g} s")


# Types used for statuses raised by Starlette/FastAPI themselves (unknown route, wrong method...).
STATUS_TYPES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
                415: "unsupported_media_type", 422: "validation_error", 429: "too_many_requests",
                500: "internal_error", 503: "unavailable", 504: "timeout"}


def error_body(type: str, message: str, **extra) -> dict:
    return {"error": {"type": type, "message": message, **extra}}
