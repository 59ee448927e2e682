"""The one error shape of every service's HTTP API: {"error": {"code", "message"}}."""
from fastapi.responses import JSONResponse
from pydantic import BaseModel


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """The one error shape of every service: {"error": {"code", "message"}}."""
    error: ErrorDetail


def error_responses(*codes: int) -> dict:
    """OpenAPI `responses=` documenting the error shape for these status codes (401, 422 and 429 always)."""
    return {code: {"model": ErrorBody} for code in sorted({401, 422, 429, *codes})}


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)
