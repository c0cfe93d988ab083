"""Every error answers JSON {"error": {"field", "message"}}; nothing answers a stack trace."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from massmailer.validation import ValidationError

logger = logging.getLogger(__name__)


def error_response(status: int, message: str, field: str | None = None):
    """Build the JSON error body with its status."""
    return jsonify({"error": {"field": field, "message": message}}), status


def register_error_handlers(app: Flask) -> None:
    """Turn validation errors, HTTP errors and surprises into JSON."""

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError):
        return error_response(400, exc.message, exc.field)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        response = error_response(exc.code or 500, exc.description or exc.name)
        if exc.code == 405 and exc.valid_methods:
            response[0].headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        logger.exception("event=unhandled_error")
        return error_response(500, "internal error; it has been logged")
