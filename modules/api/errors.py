"""The JSON error answers of the API (FastAPI's validation-error shape, plus A1111's `errors`)."""

from __future__ import annotations

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from modules.core.finite import describe, replace_non_finite
from modules.core.types import RequestError


def unprocessable(field: str, message: str, status: int = 422) -> JSONResponse:
    """FastAPI's error shape; `field` may be a dotted path (`override_settings.sd_model_checkpoint`)."""
    return JSONResponse(
        status_code=status,
        content={
            "error": "RequestError",
            "detail": [{"loc": ["body", *field.split(".")], "msg": message, "type": "value_error"}],
            "errors": f"{field}: {message}",
        },
    )


def server_error(exc: BaseException, what: str) -> JSONResponse:
    """A failure that is not the request's fault, with its reason (A1111's shape)."""
    return JSONResponse(status_code=500, content={"error": type(exc).__name__, "detail": str(exc),
                                                  "errors": f"{what}: {exc}"})


class BadImage(RequestError):
    """A request image that cannot be read (not base64, not an image, truncated, too large): 400."""


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 for a body that does not fit the request model, always strict JSON: each
    error echoes its `input`, and an input holding NaN or infinity (which Python's json reads)
    is shown with those numbers as text ("NaN", "Infinity"), where FastAPI's own answer failed
    to serialise and became a plain-text 500."""
    errors = []
    for error in exc.errors():
        error = dict(error)
        if "input" in error:
            try:
                error["input"] = replace_non_finite(error["input"], describe)
            except RecursionError:  # nested too deep to copy: the message and the place say enough
                error.pop("input")
        if "ctx" in error:
            error["ctx"] = {k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
                            for k, v in error["ctx"].items()}
            error["ctx"] = replace_non_finite(error["ctx"], describe)
        errors.append(error)
    return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})

