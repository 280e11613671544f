"""The dashboard (issue #16) in a real headless Chromium, against a real ``lifelong-rec serve``
on a loopback port with ML-100K in its log.

Chromium is Debian's (``apt-get install -y chromium``; ``make test`` installs it), driven by
Playwright for Python through ``executable_path`` (Playwright's own browser download is not
used). Every page is visited and saved as a screenshot under the test's output folder, with no
console error and no request leaving 127.0.0.1; then, signed in, a rollback and its release,
an experiment started and stopped, user 196's reasons with titles, and an item added and found.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from serve_process import ServeProcess

from lifelong_rec.cli import main

try:
    from playwright.sync_api import BrowserContext, Page, sync_playwright
except ImportError:  # the dev extra is not installed
    sync_playwright = None  # type: ignore[assignment]

TOKEN = "ui-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
START_SECONDS = 180.0  # learning ML-100K from the log takes ~20 s on two busy cores
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
NO_BROWSER = (
    "no chromium found: apt-get install -y chromium (make test installs it)"
    if CHROMIUM is None
    else "playwright is not installed: pip install -e '.[dev]'"
)


# ------------------------------------------------------------------------------ the service


def wait_until(condition: Callable[[], Any], timeout: float, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(every)
    raise AssertionError(f"not true within {timeout} s: {condition}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, datasets: Path) -> Iterator[ServeProcess]:
    """``lifelong-rec serve`` on ML-100K (ingested by ``lifelong-rec ingest``), ready, with
    a snapshot on disk every second, and real traffic through its API: rows the quarantine
    keeps, a list served to user 196 before a new event of theirs, and a second snapshot."""
    folder = tmp_path_factory.mktemp("ui-service")
    db = folder / "events.db"
    ingest = ["ingest", str(datasets / "ml-100k"), "--format", "movielens", "--db", str(db)]
    assert main(ingest) == 0
    env = {
        "LIFELONG_REC_TOKEN": TOKEN,
        "LIFELONG_REC_PERSIST_SECONDS": "1",
        "LIFELONG_REC_KEEP_SNAPSHOTS": "20",
        "LIFELONG_REC_EXPLAIN_SECONDS": "30",  # a busy machine must not drop the reasons
    }
    running = ServeProcess(db, env, folder / "server.log")
    try:
        running.wait_healthy(START_SECONDS)
        with httpx.Client(base_url=running.url, headers=AUTH, timeout=30) as client:
            wait_until(lambda: client.get("/readyz").status_code == 200, START_SECONDS)
            bad = [{"user": "", "item": "1"}, {"user": "5", "item": "2", "kind": "teleport"},
                   {"user": "7", "item": "3", "value": "x"}]  # fmt: skip
            posted = client.post("/events", json={"events": [*bad, {"user": "1", "item": "9"}]})
            assert posted.json()["rejected"] == 3, posted.text
            assert client.get("/users/196/recommendations").json()["decision_id"]
            time.sleep(0.1)  # the served list's time comes before the next event's
            assert client.post("/events", json={"user": "196", "item": "50"}).status_code == 200

            def two_snapshots() -> bool:
                client.post("/events", json={"user": "ui-models", "item": "1"})
                return len(client.get("/models").json()["snapshots"]) >= 2

            wait_until(two_snapshots, timeout=60, every=1.0)
        yield running
    finally:
        running.stop()


@pytest.fixture
def api(server: ServeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        yield client


# ------------------------------------------------------------------------------ the browser


@dataclass
class Browser:
    """One Chromium with a fresh profile, and what its pages did: console errors, uncaught
    exceptions, requests to anywhere but 127.0.0.1 (refused), screenshots taken."""

    context: BrowserContext
    base: str
    shots: Path
    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    requests: int = 0

    def open(self, path: str, screenshot: str | None = None) -> Page:
        page = self.page()
        response = page.goto(self.base + path)
        assert response is not None and response.status < 400, (path, response)
        if screenshot:
            self.screenshot(page, screenshot)
        return page

    def page(self) -> Page:
        pages = self.context.pages
        return pages[0] if pages else self.context.new_page()

    def screenshot(self, page: Page, name: str) -> None:
        page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    def assert_clean(self) -> None:
        assert not self.errors, self.errors
        assert not self.foreign, f"requests left the machine: {self.foreign}"
        assert self.requests > 0


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, with Playwright to drive it. Without them the browser tests skip,
    before the service starts, with one line for the file under pytest -ra; with
    LIFELONG_REC_REQUIRE_BROWSER=1 (as in CI) they fail instead."""
    if CHROMIUM is None or sync_playwright is None:
        if os.environ.get("LIFELONG_REC_REQUIRE_BROWSER", "") == "1":
            pytest.fail(f"LIFELONG_REC_REQUIRE_BROWSER=1: {NO_BROWSER}")
        pytest.skip(NO_BROWSER)
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(
    chromium: str, server: ServeProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Browser]:
    assert sync_playwright is not None
    shots = tmp_path_factory.mktemp("screenshots")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile, sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            profile, executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )  # fmt: skip
        context.set_default_timeout(60_000)
        watched = Browser(context, server.url, shots)

        def route(route: Any) -> None:
            watched.requests += 1
            url = urlsplit(route.request.url)
            if url.scheme in ("http", "https", "ws", "wss") and url.hostname != "127.0.0.1":
                watched.foreign.append(route.request.url)
                route.abort()
            else:
                route.continue_()

        def console(message: Any) -> None:
            if message.type == "error":
                watched.errors.append(f"console: {message.text}")

        context.route("**/*", route)
        context.on("console", console)
        context.on("weberror", lambda error: watched.errors.append(f"page: {error.error}"))
        try:
            yield watched
        finally:
            context.close()
            print(f"screenshots of the dashboard: {shots}")


def sign_in(browser: Browser) -> None:
    page = browser.open("/ui/login?next=/ui/models")
    if page.locator("text=Sign out").count():
        return
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/ui/models"))
    assert page.locator("text=Sign out").count() == 1
    assert "Signed in." in page.inner_text(".notice")


# ------------------------------------------------------------------------------ pages


def test_every_page_shows_the_services_state(browser: Browser, api: httpx.Client) -> None:
    models = api.get("/models").json()
    overview = browser.open("/ui", "overview")
    # the auto-refresh runs, and what it shows is the service's
    overview.wait_for_selector("#refreshed:has-text('updated')", timeout=20_000)
    log_end = api.get("/models").json()["log_end"]
    events = int(overview.inner_text(".kpi:has-text('Event log') .big").replace(",", ""))
    assert models["log_end"] <= events <= log_end
    quality = overview.inner_text("section:has-text('Online quality') table")
    assert "auto" in quality  # the serving model's test-then-train quality
    rejected = overview.inner_text(".kpi:has-text('Quarantined rows') .big")
    assert rejected == "3"
    browser.screenshot(overview, "overview")

    page = browser.open("/ui/models")
    for snapshot in models["snapshots"]:
        assert page.locator(f"text=v{snapshot['version']}").count() >= 1
    page.click("text=Compare")  # the two newest, proposed
    page.wait_for_selector("table.diff")
    assert "events" in page.inner_text("table.diff")
    browser.screenshot(page, "models")

    page = browser.open("/ui/experiments", "experiments")
    assert page.locator("text=Start an experiment").count() == 1

    page = browser.open("/ui/users?user=196", "users")
    assert page.locator("li.reason").count() >= 10

    page = browser.open("/ui/items?q=star", "items")
    assert page.locator("table.catalogue a", has_text="Star Wars (1977)").count() == 1
    page = browser.open("/ui/item?id=50", "item")
    assert page.inner_text("h1") == "Star Wars (1977)"
    similar = api.get("/items/50/similar").json()["items"]
    assert similar[0]["title"] in page.inner_text("section:has-text('Similar items')")

    page = browser.open("/ui/data", "data")
    quarantine = page.inner_text("table.quarantine")
    assert "unknown_kind" in quarantine and "teleport" in quarantine
    assert "ml-100k" in page.inner_text("section:has-text('Ingestion history')")

    browser.open("/ui/login", "login")
    browser.assert_clean()


# ------------------------------------------------------------------------------ actions


def test_a_rollback_and_its_release_from_the_page(browser: Browser, api: httpx.Client) -> None:
    sign_in(browser)
    models = api.get("/models").json()
    older = next(s["version"] for s in models["snapshots"] if not s["serving"])
    page = browser.open("/ui/models")
    page.click(f"a[href='/ui/models/activate?version={older}']")
    page.wait_for_selector("#confirm")
    assert f"v{older}" in page.inner_text("h1")
    browser.screenshot(page, "models-confirm-rollback")
    page.click("#confirm")
    page.wait_for_selector(".notice")
    assert f"pinned to snapshot {older}" in page.inner_text(".notice")
    pinned = api.get("/models").json()
    assert pinned["pinned"] is True and pinned["serving_version"] == f"auto-v{older}"
    assert api.get("/users/196/recommendations").json()["model_version"] == f"auto-v{older}"
    browser.screenshot(page, "models-pinned")

    page.click("a[href='/ui/models/activate?version=latest']")
    page.click("#confirm")
    page.wait_for_selector(".notice")
    assert "follows the learner's newest model" in page.inner_text(".notice")
    released = api.get("/models").json()
    assert released["pinned"] is False
    assert int(released["serving_version"].removeprefix("auto-v")) > older
    browser.assert_clean()


def test_an_experiment_started_and_stopped_from_the_page(
    browser: Browser, api: httpx.Client
) -> None:
    sign_in(browser)
    name = f"ui-ab-{uuid.uuid4().hex[:6]}"
    page = browser.open("/ui/experiments")
    page.fill("input[name=name]", name)
    page.click("#create-experiment button[type=submit]")
    page.wait_for_selector(".notice")
    assert f"Experiment {name} is running." in page.inner_text(".notice")
    listed = {e["name"]: e for e in api.get("/experiments").json()}
    assert listed[name]["running"] is True
    assert [arm["policy"] for arm in listed[name]["arms"]] == ["greedy", "epsilon(epsilon=0.1)"]
    for user in range(1, 41):  # traffic, so that the arms have decisions to show
        served = api.get(f"/users/{user}/recommendations").json()
        first = served["items"][0]["item"]
        rewards = [{"item": first, "kind": "click"}] if user % 3 == 0 else []
        api.post("/feedback", json={"decision_id": served["decision_id"], "rewards": rewards})
    page = browser.open("/ui/experiments")
    decisions = page.locator("section.experiment").first.inner_text()
    assert name in decisions and "control" in decisions and "explore" in decisions
    browser.screenshot(page, "experiments-running")

    page.click(f"a[href='/ui/experiments/stop?name={name}']")
    browser.screenshot(page, "experiments-confirm-stop")
    page.click("#confirm")
    page.wait_for_selector(".notice")
    assert f"Experiment {name} is stopped" in page.inner_text(".notice")
    assert {e["name"]: e for e in api.get("/experiments").json()}[name]["running"] is False
    browser.assert_clean()


def test_user_196_has_reasons_with_titles(browser: Browser) -> None:
    page = browser.open("/ui/users")
    page.fill("input[name=user]", "196")
    page.click("form button[type=submit]")
    page.wait_for_selector("li.reason")
    history = set(page.locator("table.timeline td.title").all_inner_texts())
    assert len(history) >= 30  # user 196 rated 39 films of ML-100K
    reasons = page.locator("li.reason").all_inner_texts()
    named = [r for r in reasons if any(title in r for title in history)]
    assert len(named) >= len(reasons) // 2, reasons  # "Similar to Princess Bride, The (1987)..."
    assert any(re.search(r"\(\d{4}\)", reason) for reason in named)
    assert page.locator("table.recommendations td:has-text('exploiting')").count() >= 1
    change = page.inner_text("section:has-text('How the list changed')")
    assert "Before their latest event" in change and "Star Wars (1977)" in change
    browser.screenshot(page, "users")
    browser.assert_clean()


def test_an_item_added_on_the_page_is_found(browser: Browser, api: httpx.Client) -> None:
    sign_in(browser)
    item = f"ui-item-{uuid.uuid4().hex[:8]}"
    page = browser.open("/ui/items")
    page.fill("#item-form input[name=item]", item)
    page.fill("#item-form input[name=title]", "Zyzzyva Chronicles (2031)")
    page.fill("#item-form input[name=categories]", "Drama, Sci-Fi")
    page.fill("#item-form textarea[name=text]", "A lighthouse keeper counts ships.")
    page.click("#item-form button[type=submit]")
    page.wait_for_selector(".notice")
    assert page.inner_text("h1") == "Zyzzyva Chronicles (2031)"
    assert api.get(f"/items/{item}").json()["categories"] == ["Drama", "Sci-Fi"]

    page = browser.open("/ui/items")
    page.fill("input[name=q]", "zyzzyva")
    page.click("form.row button[type=submit]")
    page.wait_for_url(re.compile(r"q=zyzzyva"))
    found = page.locator("table.catalogue a", has_text="Zyzzyva Chronicles (2031)")
    assert found.count() == 1
    browser.screenshot(page, "items-search")
    browser.assert_clean()


# ------------------------------------------------------------------------------ guards


def _dashboard_session(client: httpx.Client, token: str | None) -> str:
    """A browser's cookies in ``client`` and the CSRF token of its forms (signed in with
    ``token`` when given)."""
    page = client.get("/ui/login")
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert csrf, page.text
    if token is not None:
        signed = client.post("/ui/login", data={"csrf": csrf[1], "token": token, "next": "/ui"})
        assert signed.status_code == 303 and signed.headers["location"].startswith("/ui")
    return csrf[1]


def test_writes_need_a_session_a_csrf_token_and_this_origin(
    server: ServeProcess, api: httpx.Client
) -> None:
    pinned = api.get("/models").json()["pinned"]
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        csrf = _dashboard_session(anonymous, None)
        refused = anonymous.post("/ui/models/activate", data={"csrf": csrf, "version": "1"})
        assert refused.status_code == 303
        assert refused.headers["location"].startswith("/ui/login")
        wrong = anonymous.post("/ui/login", data={"csrf": csrf, "token": "not-the-token"})
        assert wrong.status_code == 401
        assert "lr_ui_session" not in anonymous.cookies
        # the API's writes still take the bearer token, not a dashboard cookie
        assert anonymous.post("/models/1/activate").status_code == 401
    with httpx.Client(base_url=server.url, timeout=30) as signed_in:
        csrf = _dashboard_session(signed_in, TOKEN)
        forged = signed_in.post("/ui/models/activate", data={"csrf": "0" * 64, "version": "1"})
        assert forged.status_code == 403
        elsewhere = signed_in.post(
            "/ui/models/activate", data={"csrf": csrf, "version": "1"},
            headers={"Origin": "https://attacker.example"},
        )  # fmt: skip
        assert elsewhere.status_code == 403
        cookie = signed_in.cookies["lr_ui_session"]
        assert TOKEN not in cookie
    assert api.get("/models").json()["pinned"] == pinned


def test_pages_forbid_inline_scripts_and_framing(server: ServeProcess) -> None:
    page = httpx.get(f"{server.url}/ui", timeout=30)
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "<script>" not in page.text and " style=" not in page.text
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)  # nothing from elsewhere
    cookie = page.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
