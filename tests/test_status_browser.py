"""The status page in a real browser: Debian's chromium, driven through chromedriver, over
a real uvicorn server and a backlog held for different reasons on two lines."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from scheduler import runner
from scheduler.client import Healthgate
from scheduler.settings import Settings
from tests.backlog_world import LINE, OTHER, build
from tests.conftest import POLICY
from tests.services import require_browser
from tests.test_e2e import environment, wait_until, web_ok
from tests.web_client import TOKEN

#: When set, the screenshot is also saved there (how docs/status-page.png is made).
SCREENSHOT_ENV = "HEALTHGATE_STATUS_SCREENSHOT"

webdriver = pytest.importorskip("selenium.webdriver")
By = pytest.importorskip("selenium.webdriver.common.by").By
expected = pytest.importorskip("selenium.webdriver.support.expected_conditions")
WebDriverWait = pytest.importorskip("selenium.webdriver.support.wait").WebDriverWait
#: How long a click may take to load the next page (a bound for a broken run only).
LOAD_SECONDS = 15


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real web process over a store with the two-line backlog; its URL and one id."""
    policy = tmp_path / "healthgate.toml"
    policy.write_text(POLICY)
    settings = Settings(data_dir=tmp_path / "data", policy_file=policy, broker_url="memory://")
    hg = Healthgate(settings)
    hg.migrate()
    # Drained a second after the enqueue, so every message is due
    world = build(hg, datetime.now(UTC) + timedelta(seconds=1))
    hg.close()
    env = environment(settings) | {"HEALTHGATE_API_TOKEN": TOKEN}
    command = runner.web(settings.model_copy(update={"web_port": env["HEALTHGATE_WEB_PORT"]}))
    log = (tmp_path / "web.log").open("w")
    web = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log, stderr=log)
    try:
        wait_until(lambda: web_ok(env), 30, "the web process to answer /healthz")
        yield f"http://127.0.0.1:{env['HEALTHGATE_WEB_PORT']}", world.other_ids[-1]
    finally:
        web.terminate()
        web.wait(timeout=30)
        log.close()


def test_status_page_in_a_browser(server: tuple[str, str], tmp_path: Path) -> None:
    chromium, chromedriver = require_browser()
    url, held_id = server
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,2000"):
        options.add_argument(argument)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(chromedriver))
    try:
        # When a person opens the page, is sent to the form and logs in with the token
        browser.get(url + "/")
        assert browser.current_url == url + "/login"
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.ID, "login").click()
        WebDriverWait(browser, LOAD_SECONDS).until(expected.url_to_be(url + "/"))

        # Then the lines, the reasons and the chart are on the page
        lines = browser.find_elements(By.CSS_SELECTOR, "article.line")
        assert [line.get_attribute("data-line") for line in lines] == [LINE, OTHER]
        reasons = browser.find_element(By.ID, "reasons").text
        for reason in ("cap_sends_per_minute 5", "cap_sends_per_recipient_per_minute 4"):
            assert reason in reasons
        assert "chat_critical 1" in reasons
        assert len(browser.find_elements(By.CSS_SELECTOR, "#chart rect.bar")) == 48
        sends = browser.find_elements(By.CSS_SELECTOR, "#chart rect.sends")
        holds = browser.find_elements(By.CSS_SELECTOR, "#chart rect.holds")
        # The last hour's bars stand: 22 sends, 9 throttled and 1 deferred
        assert float(sends[-1].get_attribute("height") or 0) > 0
        assert float(holds[-1].get_attribute("height") or 0) > 0

        # And a message looked up by its id shows its history
        browser.find_element(By.ID, "message").send_keys(held_id)
        browser.find_element(By.ID, "lookup").click()
        WebDriverWait(browser, LOAD_SECONDS).until(
            expected.presence_of_element_located((By.ID, "found"))
        )
        found = browser.find_element(By.ID, "found").text
        assert held_id in found
        assert "throttled" in found
        assert "cap_sends_per_recipient_per_minute" in browser.find_element(By.ID, "explain").text
        browser.get(url + "/")
        shot = tmp_path / "status-page.png"
        browser.save_screenshot(str(shot))
        print(f"status page screenshot: {shot}")
        if os.environ.get(SCREENSHOT_ENV):
            browser.save_screenshot(os.environ[SCREENSHOT_ENV])

        # And logging out sends the next visit to the form
        browser.find_element(By.ID, "logout").click()
        WebDriverWait(browser, LOAD_SECONDS).until(expected.url_to_be(url + "/login"))
        browser.get(url + "/")
        assert browser.current_url == url + "/login"
    finally:
        browser.quit()
