"""Bearer API keys on every /v1 endpoint; g.api_key is the caller's key."""

from __future__ import annotations

from flask import g, request

from massmailer import apikeys
from massmailer.api.errors import error_response
from massmailer.extensions import db


def require_api_key():
    """before_request hook: answer 401 unless a valid, active key is presented."""
    header = request.headers.get("Authorization", "")
    scheme, _, raw = header.partition(" ")
    key = None
    if scheme.lower() == "bearer" and raw.strip():
        key = apikeys.authenticate(db.session, raw.strip())
    if key is None:
        # One answer for missing, wrong and revoked keys: it tells a prober nothing.
        response = error_response(401, "a valid API key is required", "Authorization")
        response[0].headers["WWW-Authenticate"] = 'Bearer realm="massmailer"'
        return response
    g.api_key = key
    return None
