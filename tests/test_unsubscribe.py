"""One-click unsubscribe (RFC 8058): signed links, the headers, the pages, and the whole path."""

from __future__ import annotations

from email import message_from_bytes, policy
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from massmailer.extensions import db
from massmailer.models import EmailJob, Suppression
from massmailer.unsubscribe import BadToken, UnsubscribeLinks
from tests import infra

PUBLIC_URL = "https://mail.example.test"
MAILTO = "unsubscribe@example.test"


@pytest.fixture
def env(env):
    return {**env, "MASSMAILER_PUBLIC_URL": PUBLIC_URL, "MASSMAILER_UNSUBSCRIBE_MAILTO": MAILTO}


def links(mailto: str | None = None) -> UnsubscribeLinks:
    return UnsubscribeLinks("secret", PUBLIC_URL, mailto)


# --- tokens and headers (pure) ------------------------------------------------------------


def test_a_token_names_the_address_and_the_job():
    found = links().read(links().token("Ann@Example.com", 42))

    assert (found.address, found.job_id) == ("ann@example.com", 42)


def test_the_link_starts_with_the_public_url():
    url = links().url("ann@example.com", 42)

    assert url.startswith(PUBLIC_URL + "/unsubscribe/")
    assert links().read(url.rsplit("/", 1)[1]).address == "ann@example.com"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not-a-token",
        UnsubscribeLinks("another secret", PUBLIC_URL).token("ann@example.com", 1),
        links().token("ann@example.com", 1)[:-2] + "xx",
        links()._serializer.dumps({"address": "ann@example.com"}),
        links()._serializer.dumps(["ann@example.com", "1"]),
    ],
)
def test_a_forged_or_malformed_token_is_refused(token):
    with pytest.raises(BadToken):
        links().read(token)


def test_marketing_headers_offer_one_click_and_mailto_when_configured():
    url = links().url("ann@example.com", 7)
    token = url.rsplit("/", 1)[1]

    assert links().headers(url) == (
        ("List-Unsubscribe", f"<{url}>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    )
    assert links(MAILTO).headers(url)[0] == (
        "List-Unsubscribe",
        f"<{url}>, <mailto:{MAILTO}?subject=unsubscribe%20{token}>",
    )


# --- the pages ----------------------------------------------------------------------------


def path_for(settings, address: str, job_id: int | None = 1) -> str:
    url = UnsubscribeLinks(settings.secret_key, settings.public_url).url(address, job_id)
    return urlsplit(url).path


def suppressed() -> list[tuple[str, str, str | None]]:
    db.session.expire_all()
    return [(s.email, s.reason, s.detail) for s in db.session.scalars(select(Suppression))]


@pytest.mark.integration
def test_get_shows_a_confirmation_form_and_unsubscribes_nobody(client, settings):
    response = client.get(path_for(settings, "ann+<b>@example.com"))

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert '<form method="post">' in page and "<button" in page
    assert "ann+&lt;b&gt;@example.com" in page
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert suppressed() == []


@pytest.mark.integration
def test_one_click_post_suppresses_the_address_without_any_api_key(client, settings):
    path = path_for(settings, "Ann@example.com", 42)

    response = client.post(path, data={"List-Unsubscribe": "One-Click"})
    again = client.post(path, data={"List-Unsubscribe": "One-Click"})

    assert (response.status_code, again.status_code) == (200, 200)
    assert "unsubscribed" in response.get_data(as_text=True)
    assert suppressed() == [("ann@example.com", "unsubscribe", "one-click; job 42")]


@pytest.mark.integration
@pytest.mark.parametrize("method", ["get", "post"])
def test_a_bad_link_answers_400_and_changes_nothing(client, method):
    response = getattr(client, method)("/unsubscribe/forged.token")

    assert response.status_code == 400
    assert "not valid" in response.get_data(as_text=True)
    assert suppressed() == []


# --- through a real worker ----------------------------------------------------------------


def received_by(smtp_server, address: str):
    [message] = [m for m in smtp_server.messages if m.rcpt_tos == [address]]
    return message_from_bytes(message.data, policy=policy.default)


@pytest.mark.integration
@pytest.mark.slow
def test_marketing_mail_carries_one_click_unsubscribe_and_transactional_mail_does_not(
    client, auth, env, smtp_server
):
    def send(path, payload):
        response = client.post(path, json=payload, headers=auth)
        assert response.status_code == 202, response.get_json()

    news = {"to": "news@example.com", "subject": "News", "text": "Hi", "category": "marketing"}
    send("/v1/emails", news)
    send("/v1/emails", {"to": "receipt@example.com", "subject": "Receipt", "text": "Paid"})
    send(
        "/v1/batches",
        {
            "template": {
                "subject": "Offers for {{ name }}",
                "text": "Hi {{ name }}. Unsubscribe: {{ unsubscribe_url }}",
                "html": '<a href="{{ unsubscribe_url }}">Unsubscribe</a>',
            },
            "recipients": [{"to": "fan@example.com", "vars": {"name": "Fan"}}],
            "category": "marketing",
        },
    )

    with infra.running_worker(env):
        infra.wait_until(lambda: smtp_server.message_count == 3, 30, message="three messages")

    news = received_by(smtp_server, "news@example.com")
    assert news["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link, mailto = (part.strip(" <>") for part in news["List-Unsubscribe"].split(","))
    assert link.startswith(f"{PUBLIC_URL}/unsubscribe/")
    assert mailto.startswith(f"mailto:{MAILTO}?subject=unsubscribe%20")
    receipt = received_by(smtp_server, "receipt@example.com")
    assert receipt["List-Unsubscribe"] is None and receipt["List-Unsubscribe-Post"] is None

    fan = received_by(smtp_server, "fan@example.com")
    fan_link = fan["List-Unsubscribe"].split(",")[0].strip(" <>")
    text, html = fan.iter_parts()
    assert text.get_content().strip() == f"Hi Fan. Unsubscribe: {fan_link}"
    assert html.get_content().strip() == f'<a href="{fan_link}">Unsubscribe</a>'

    # The mailbox provider's one-click POST to the link from the header.
    response = client.post(urlsplit(fan_link).path, data="List-Unsubscribe=One-Click")
    assert response.status_code == 200
    job_id = db.session.scalar(
        select(EmailJob.job_id).where(EmailJob.recipient == "fan@example.com")
    )
    assert suppressed() == [("fan@example.com", "unsubscribe", f"one-click; job {job_id}")]
