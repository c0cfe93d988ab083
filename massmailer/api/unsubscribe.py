"""/unsubscribe/<token>: GET shows a confirmation page, POST (one-click, RFC 8058) unsubscribes.

No API key and no login: the signed token is the authority. GET never unsubscribes, because
mail scanners and link previews follow links; only a POST does, as RFC 8058 requires.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app
from markupsafe import escape

from massmailer import audit, jobstore, suppressions
from massmailer.extensions import db
from massmailer.models.types import utcnow
from massmailer.unsubscribe import BadToken, Unsubscribe, UnsubscribeLinks

bp = Blueprint("unsubscribe", __name__)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<style>body{{font-family:sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}
button{{font-size:1rem;padding:.5rem 1rem}}</style></head>
<body><h1>{title}</h1>{body}</body></html>
"""
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the token is in the URL
    "X-Robots-Tag": "noindex",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
}


@bp.get("/unsubscribe/<token>")
def confirm(token: str):
    found = _read(token)
    if isinstance(found, Response):
        return found
    body = (
        f"<p>Stop sending these emails to <strong>{escape(found.address)}</strong>?</p>"
        '<form method="post">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>'
    )
    return _page(200, "Unsubscribe", body)


@bp.post("/unsubscribe/<token>")
def unsubscribe(token: str):
    found = _read(token)
    if isinstance(found, Response):
        return found
    detail = "one-click" if found.job_id is None else f"one-click; job {found.job_id}"
    suppressions.add_many(db.session, [(found.address, "unsubscribe", detail)], utcnow())
    if found.job_id is not None:  # a token may name no job
        jobstore.log_unsubscribed(db.session, found.job_id, found.address, "one-click")
    audit.record(
        db.session, "suppression.add", found.address, actor=audit.UNSUBSCRIBE_LINK, detail=detail
    )
    db.session.commit()
    body = f"<p><strong>{escape(found.address)}</strong> will receive no more of these emails.</p>"
    return _page(200, "You are unsubscribed", body)


def _read(token: str) -> Unsubscribe | Response:
    settings = current_app.extensions["massmailer.settings"]
    links = UnsubscribeLinks(
        settings.secret_key, settings.public_url, previous_keys=settings.previous_secret_keys
    )
    try:
        return links.read(token)
    except BadToken:
        return _page(400, "Link not valid", "<p>This unsubscribe link is not valid.</p>")


def _page(status: int, title: str, body: str) -> Response:
    html = _PAGE.format(title=escape(title), body=body)
    return Response(html, status=status, mimetype="text/html", headers=_HEADERS)
