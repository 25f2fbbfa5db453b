"""Every failure of the Serve app answers with an OpenAI-shaped error body.

Routes raise `APIError` for what they refuse; FastAPI's own 404/405/422 and any unexpected
exception (a 500, logged with its traceback) get the same shape, so a client never sees HTML or
a bare string.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from serving.openai_api import APIError

log = logging.getLogger("ray.serve")


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


def internal_error(exc: BaseException) -> APIError:
    log.error("chat server: unexpected %s", type(exc).__name__, exc_info=exc)
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error", code="internal_error")


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(APIError(exc.status_code, str(exc.detail), "invalid_request_error",
                                       code="not_found" if exc.status_code == 404 else None))

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"])
        return error_response(APIError(400, f"{param}: {first['msg']}", param=param or None))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error_response(internal_error(exc))

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
