"""The JSON error answers of the API (FastAPI's validation-error shape, plus A1111's `errors`)."""

from __future__ import annotations

from fastapi.responses import JSONResponse

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
