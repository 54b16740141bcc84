"""The dashboard in a real browser: Debian's headless Chromium driven by selenium,
against the running stack. Assertions are on what a person sees (text, a progress bar
that moves, buttons there or not); every test saves screenshots to
``test-artifacts/screenshots/`` for a person to look at afterwards.

What the browser cannot show (the cookie's flags, a forged form, a viewer's POST) is
checked over HTTP with the browser's own session.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from testbed.images import Pusher
from testbed.proxy import FaultProxy
from testbed.services import RegistryServer
from testbed.stack import ADMIN, Api, Stack, wait_for
from tests.test_inventory import dist_info
from tests.test_vulns import HIGH_V3, Ids, cvss, hit, import_cli, osv_record, write_records

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = Path("test-artifacts/screenshots")
# Headless, and nothing that tries the network on its own (there is none here).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1100",
)

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="no chromium/chromium-driver: run the suite through scripts/test.sh",
)


def spec(registry: str, repository: str = "", **extra: Any) -> dict[str, Any]:
    return {"version": "2", "registry": registry, "repository": repository, **extra}


class Browser:
    """One headless Chromium with a profile of its own, and what a person does with it."""

    def __init__(self, base: str, profile: Path, backend: str) -> None:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        self.driver: WebDriver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.implicitly_wait(0)
        self.base = base
        self.backend = backend

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def text(self, selector: str = "body") -> str:
        return self.driver.find_element(By.CSS_SELECTOR, selector).text

    def has(self, selector: str) -> bool:
        return bool(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def button(self, label: str) -> Any:
        [found] = [b for b in self.driver.find_elements(By.TAG_NAME, "button") if b.text == label]
        return found

    def buttons(self) -> set[str]:
        return {b.text for b in self.driver.find_elements(By.TAG_NAME, "button")}

    def wait(self, until: Callable[[], Any], timeout: float = 30, what: str = "the page") -> Any:
        def attempt(_driver: WebDriver) -> Any:
            try:
                return until()
            except StaleElementReferenceException:  # htmx swapped it meanwhile
                return False

        return WebDriverWait(self.driver, timeout, poll_frequency=0.2).until(
            attempt, f"waiting for {what}"
        )

    def login(self, user: str = "", password: str = "", token: str = "") -> None:
        self.driver.delete_all_cookies()
        self.open("/")  # sent to the login form, to come back here
        self.wait(lambda: "Log in to regscan" in self.text(), what="the login form")
        if token:
            self.driver.find_element(By.NAME, "token").send_keys(token)
        else:
            self.driver.find_element(By.NAME, "username").send_keys(user)
            self.driver.find_element(By.NAME, "password").send_keys(password)
        self.button("Log in").click()
        self.wait(lambda: self.text("h1") == "Overview", what="the overview")

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}-{self.backend}.png"
        self.driver.save_screenshot(str(path))
        return path

    def session(self) -> requests.Session:
        """An HTTP session carrying the browser's cookies, for what a page cannot show."""
        http = requests.Session()
        for cookie in self.driver.get_cookies():
            http.cookies.set(cookie["name"], cookie["value"])
        return http

    def csrf(self) -> str:
        found = self.driver.find_element(By.CSS_SELECTOR, "input[name=csrf]")
        return str(found.get_attribute("value"))

    def quit(self) -> None:
        self.driver.quit()


@pytest.fixture(scope="module")
def browser(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    backend = "sqlite" if stack.env["REGSCAN_DATABASE_URL"].startswith("sqlite") else "postgresql"
    profile = tmp_path_factory.mktemp("chromium-profile")
    opened = Browser(stack.api.base, profile, backend)
    try:
        yield opened
    finally:
        opened.quit()
        shutil.rmtree(profile, ignore_errors=True)


def progress(browser: Browser) -> tuple[int, int, float] | None:
    """What the live part shows: images done, of how many, and the bar's position; None
    while it is still discovering."""
    text = browser.text("[data-testid=progress-text]")
    match = re.search(r"(\d+) of (\d+) images done", text)
    if match is None:
        return None
    bar = browser.driver.find_element(By.CSS_SELECTOR, "#progress progress")
    return int(match.group(1)), int(match.group(2)), float(bar.get_attribute("value") or 0)


def test_an_operator_watches_a_sweep_advance_and_stops_it(
    browser: Browser, api: Api, pusher: Pusher, slow_registry: FaultProxy, name: str
):
    # Given ten images behind a registry whose manifests take a while, one at a time
    repo = f"{name}/app"
    for n in range(10):
        pusher.push_image(repo, f"v{n}", {f"f{n}": f"{n}".encode()})
    slow_registry.delay(0.8, path_prefix=f"/v2/{repo}/manifests")
    api.set_specs(spec(f"http://{slow_registry.host}", repo, cap=0, scanners=1))

    # When the admin logs in and starts a sweep from the overview
    browser.login(*ADMIN)
    assert "admin" in browser.text("header") and "Log out" in browser.buttons()
    browser.button("Scan everything in scope").click()
    browser.wait(lambda: "started" in browser.text(".flash"), what="the sweep to start")

    # Then the progress bar advances by itself as images are scanned (the page is not
    # reloaded: htmx fetches the live part again)
    first = browser.wait(lambda: (p := progress(browser)) and p[0] >= 1 and p, 60, "an image")
    assert first[1] == 10
    browser.screenshot("overview-sweep-running")
    later = browser.wait(
        lambda: (p := progress(browser)) and p[0] >= first[0] + 2 and p, 60, "the bar to move"
    )
    assert later[2] > first[2]  # the bar itself moved, not only the text
    assert "images/s" in browser.text("#progress")

    # When the admin stops it
    browser.button("Stop the scan").click()

    # Then the overview says so, and the scan ends stopped with the images not scanned
    browser.wait(lambda: "is stopping" in browser.text(".flash"), what="the stop message")
    browser.wait(lambda: "STOPPED" in browser.text("#progress").upper(), 60, "the stopped scan")
    shown = progress(browser)
    assert shown is not None and shown[0] <= shown[1] == 10
    assert "Scan everything in scope" in browser.buttons()
    browser.screenshot("overview-sweep-stopped")


@pytest.fixture
def vulnerable(
    stack: Stack, api: Api, pusher: Pusher, registry: RegistryServer, name: str, tmp_path: Path
) -> dict[str, str]:
    """A scanned image holding a package with a high finding fixed in 2.32.0."""
    i = Ids(name)
    record = osv_record(
        i.cve(1),
        hit("PyPI", i.pkg("requests"), {"introduced": "0"}, {"fixed": "2.32.0"}),
        severity=cvss("CVSS_V3", HIGH_V3),
    )
    folder = write_records(tmp_path, [record])
    imported = import_cli(stack, folder)
    assert imported.returncode == 0, imported.stderr
    repo = f"{name}/py"
    pusher.push_image(repo, "1", dist_info(i.pkg("requests"), "2.31.0"))
    api.set_specs(spec(f"http://{registry.host}", f"{name}/*"))
    tag = {"registry": registry.host, "repo": repo, "tag": "1"}
    assert api.wait_job(api.started({"onDemandScan": True, "tag": tag}))["status"] == "completed"
    return {"name": f"{registry.host}/{repo}:1", "cve": i.cve(1), "package": i.pkg("requests")}


def test_a_person_finds_an_image_and_sees_its_findings(
    browser: Browser, vulnerable: dict[str, str]
):
    browser.login(*ADMIN)

    # When they search the images and open theirs
    browser.open("/ui/images?q=" + vulnerable["name"])
    browser.driver.find_element(By.LINK_TEXT, vulnerable["name"]).click()
    browser.wait(lambda: "Findings (1)" in browser.text(), what="the image page")

    # Then they see its platform, OS, layers, and the finding with severity and fix
    page = browser.text()
    assert "linux/amd64" in page and "Layers" in page
    row = browser.text("table.findings tbody tr")
    for expected in (vulnerable["cve"], "HIGH", vulnerable["package"], "2.31.0", "2.32.0"):
        assert expected in row, row
    assert "Rescan this image" in browser.buttons()
    browser.screenshot("image-findings")

    # And the fleet page counts it among the findings
    browser.open("/ui/fleet")
    assert vulnerable["cve"] in browser.text()
    assert int(browser.text(".total.sev-high .n")) >= 1
    assert browser.has("svg.chart rect.fill-high")
    browser.screenshot("fleet")

    # And an operator's rescan is queued from the image page
    browser.driver.back()
    browser.button("Rescan this image").click()
    browser.wait(lambda: "on-demand scan" in browser.text(".flash"), what="the rescan message")


def test_a_viewer_sees_no_buttons_and_is_refused_anyway(
    browser: Browser, api: Api, stack: Stack, vulnerable: dict[str, str]
):
    # Given a viewer's API token
    issued = api.post(
        "/api/v1/tokens", json={"name": "ui-viewer", "team": "read", "role": "viewer"}
    )
    assert issued.status_code == 200, issued.text

    # When the viewer logs in with it
    browser.login(token=issued.json()["token"])

    # Then the overview and the image page offer nothing to start, stop or rescan
    assert "viewer" in browser.text("header")
    assert browser.buttons() == {"Log out"}
    browser.open("/ui/images?q=" + vulnerable["name"])
    browser.driver.find_element(By.LINK_TEXT, vulnerable["name"]).click()
    browser.wait(lambda: "Findings" in browser.text(), what="the image page")
    assert browser.buttons() == {"Log out"}
    browser.screenshot("viewer-image")

    # And the same forms sent anyway, with the viewer's own session and token, are refused
    http, csrf = browser.session(), browser.csrf()
    image_id = browser.driver.current_url.rstrip("/").rsplit("/", 1)[1]
    for path in ("/ui/stop", "/ui/scan", f"/ui/images/{image_id}/rescan"):
        r = http.post(stack.api.base + path, data={"csrf": csrf}, allow_redirects=False)
        assert r.status_code == 403, (path, r.status_code)
        assert "role viewer may not start or stop scans" in r.text


def test_the_session_cookie_and_forms_resist_other_sites(browser: Browser, stack: Stack):
    browser.login(*ADMIN)
    [cookie] = [c for c in browser.driver.get_cookies() if c["name"] == "regscan_session"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"

    # A form without the page's CSRF token (as another site would send it) is refused
    http = browser.session()
    for forged in ({}, {"csrf": "forged"}):
        r = http.post(f"{stack.api.base}/ui/stop", data=forged, allow_redirects=False)
        assert r.status_code == 403 and "reload" in r.text

    # And pages may not be framed, nor load anything from elsewhere
    r = http.get(f"{stack.api.base}/")
    assert r.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]

    # And logging out ends the session: the old cookie no longer opens a page
    browser.button("Log out").click()
    browser.wait(lambda: "Log in to regscan" in browser.text(), what="the login form")
    r = http.get(f"{stack.api.base}/", allow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")


def test_a_wrong_password_is_said_on_the_login_form(browser: Browser):
    browser.driver.delete_all_cookies()
    browser.open("/ui/login")
    browser.driver.find_element(By.NAME, "username").send_keys("admin")
    browser.driver.find_element(By.NAME, "password").send_keys("not-the-password")
    browser.button("Log in").click()
    browser.wait(lambda: browser.has(".error"), what="the error")
    assert "invalid username or password" in browser.text(".error")
    wait_for(lambda: "Log in to regscan" in browser.text(), 5, "the form again")
