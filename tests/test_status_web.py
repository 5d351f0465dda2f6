"""`GET /status` and the status page: its login, its cookie, and everything escaped."""

from __future__ import annotations

from collections.abc import Iterator

import pydantic.v1  # noqa: F401  FastAPI imports it lazily, which fails once freezegun fakes date
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update

from scheduler import access
from scheduler.client import Healthgate
from scheduler.settings import Settings
from scheduler.store.models import Line
from scheduler.web import create_app
from tests.backlog_world import HOSTILE_KEY, LINE, OTHER, build
from tests.conftest import START
from tests.test_status import HOSTILE_DETAIL
from tests.web_client import BASE_URL, TOKEN, reader, web_settings

HTML = {"Accept": "text/html,application/xhtml+xml"}


@pytest.fixture
def app(settings: Settings, hg: Healthgate) -> FastAPI:
    return create_app(web_settings(settings))


@pytest.fixture
def browser(app: FastAPI) -> Iterator[TestClient]:
    """A client with no bearer header, which follows no redirect."""
    with TestClient(app, base_url=BASE_URL, follow_redirects=False) as client:
        yield client


def log_in(client: TestClient, token: str = TOKEN) -> str:
    response = client.post("/login", data={"token": token})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/"
    return response.headers["set-cookie"]


def test_status_route_answers_what_the_cli_shows(app: FastAPI, hg: Healthgate) -> None:
    build(hg, START)

    with reader(app) as client:
        response = client.get("/status")

    assert response.status_code == 200, response.text
    data = response.json()
    assert data == hg.status()
    assert data["waiting"]["by_reason"] == {
        "cap_sends_per_minute": 5,
        "cap_sends_per_recipient_per_minute": 4,
        "chat_critical": 1,
    }


def test_a_browser_without_a_session_is_sent_to_the_login_form(browser: TestClient) -> None:
    page = browser.get("/", headers=HTML)
    plain = browser.get("/")
    form = browser.get("/login")

    assert (page.status_code, page.headers["location"]) == (303, "/login")
    assert plain.status_code == 401
    assert plain.json()["field"] == "Authorization"
    assert form.status_code == 200
    assert 'name="token"' in form.text
    assert "default-src 'none'" in form.headers["content-security-policy"]


def test_login_sets_a_cookie_that_is_not_the_token_and_reads_with_it(browser: TestClient) -> None:
    cookie = log_in(browser)

    assert TOKEN not in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback: a browser would drop it
    for path in ("/", "/status", "/lines"):
        assert browser.get(path).status_code == 200, path


def test_login_cookie_is_secure_beyond_loopback_http(app: FastAPI) -> None:
    with TestClient(app, base_url="https://localhost", follow_redirects=False) as client:
        cookie = log_in(client)

    assert "Secure" in cookie


@pytest.mark.parametrize("token", ["", "not-the-token", TOKEN + "x", TOKEN[:-1]])
def test_a_wrong_token_logs_nobody_in(browser: TestClient, token: str) -> None:
    response = browser.post("/login", data={"token": token})

    assert response.status_code == 401
    assert "set-cookie" not in response.headers
    assert TOKEN not in response.text
    assert "HEALTHGATE_API_TOKEN" in response.text
    assert browser.get("/status").status_code == 401


@pytest.mark.parametrize(
    "forged",
    [
        TOKEN,
        f"{int(START.timestamp())}.{'0' * 64}",
        f"{int(START.timestamp()) - access.SESSION_SECONDS}.{'0' * 64}",
        "not a cookie",
    ],
    ids=["the token itself", "an unsigned session", "an unsigned old session", "junk"],
)
def test_a_forged_cookie_reads_nothing(browser: TestClient, forged: str) -> None:
    browser.cookies.set(access.SESSION_COOKIE, forged)

    assert browser.get("/status").status_code == 401


def test_a_cookie_of_another_process_or_too_old_reads_nothing(
    browser: TestClient, settings: Settings
) -> None:
    # Given a cookie issued by another app, and one of this app from a day ago
    other = create_app(web_settings(settings))
    with TestClient(other, base_url=BASE_URL, follow_redirects=False) as client:
        log_in(client)
        elsewhere = client.cookies[access.SESSION_COOKIE]
    log_in(browser)
    guard_cookie = browser.cookies[access.SESSION_COOKIE]
    issued = int(guard_cookie.split(".")[0])
    browser.cookies.clear()

    browser.cookies.set(access.SESSION_COOKIE, elsewhere)
    assert browser.get("/status").status_code == 401
    browser.cookies.set(access.SESSION_COOKIE, guard_cookie)
    assert browser.get("/status").status_code == 200
    stale = f"{issued - access.SESSION_SECONDS}.{guard_cookie.split('.')[1]}"
    browser.cookies.set(access.SESSION_COOKIE, stale)
    assert browser.get("/status").status_code == 401


def test_logout_clears_the_cookie(browser: TestClient) -> None:
    log_in(browser)

    response = browser.post("/logout")

    assert (response.status_code, response.headers["location"]) == (303, "/login")
    assert access.SESSION_COOKIE not in browser.cookies
    assert browser.get("/", headers=HTML).status_code == 303


def test_page_shows_lines_reasons_chart_and_a_message_escaped(
    browser: TestClient, hg: Healthgate
) -> None:
    world = build(hg, START)
    with hg.runtime.sessions.begin() as session:
        session.execute(update(Line).where(Line.number == OTHER).values(detail=HOSTILE_DETAIL))
    log_in(browser)

    page = browser.get("/", params={"message": world.critical_id})
    unknown = browser.get("/", params={"message": "<b>msg</b>[/x]"})

    assert page.status_code == 200
    text = page.text
    assert f'data-line="{LINE}"' in text
    assert f'data-line="{OTHER}"' in text
    assert 'data-reason="cap_sends_per_recipient_per_minute"' in text
    assert text.count('<rect class="bar') == 48  # 24 hours, sends and holds
    assert "AT_RISK pace" in text
    # The message's idempotency key and the provider's words, escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;[/x][bold]" in text
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in text
    assert "<script>" not in text
    assert "chat_critical" in text
    assert "&lt;b&gt;msg&lt;/b&gt;[/x]" in unknown.text
    assert "<b>msg" not in unknown.text
    assert HOSTILE_KEY not in text
    assert page.headers["cache-control"] == "no-store"


def test_static_files_are_the_packages_own(browser: TestClient) -> None:
    css = browser.get("/static/status.css")

    assert css.status_code == 200
    assert "http" not in css.text  # nothing loaded from another site
