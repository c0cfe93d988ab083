"""HTTP basic authentication for the operator pages (the dashboard), from the environment.

Without MASSMAILER_ADMIN_PASSWORD the pages are refused, never served open.
"""

from __future__ import annotations

import hmac

from flask import Response, current_app, request

from massmailer.config import OpsSettings

REALM = 'Basic realm="MassMailer admin", charset="UTF-8"'
DISABLED_MESSAGE = (
    "The dashboard is disabled: set MASSMAILER_ADMIN_PASSWORD "
    "(and MASSMAILER_ADMIN_USER, default 'admin') to enable it.\n"
)


def credentials_match(username: str | None, password: str | None, ops: OpsSettings) -> bool:
    """Compare both in constant time, so a wrong user answers as fast as a wrong password."""
    if not ops.admin_password or username is None or password is None:
        return False
    user_ok = hmac.compare_digest(username.encode("utf-8"), ops.admin_user.encode("utf-8"))
    password_ok = hmac.compare_digest(password.encode("utf-8"), ops.admin_password.encode("utf-8"))
    return user_ok and password_ok


def require_admin() -> Response | None:
    """before_request hook: 503 when no admin password is set, 401 without the right one."""
    ops = current_app.extensions["massmailer.settings"].ops
    if not ops.admin_password:
        return Response(DISABLED_MESSAGE, 503, mimetype="text/plain")
    auth = request.authorization
    if (
        auth is None
        or auth.type != "basic"
        or not credentials_match(auth.username, auth.password, ops)
    ):
        return Response(
            "Authentication required.\n",
            401,
            {"WWW-Authenticate": REALM},
            mimetype="text/plain",
        )
    return None
