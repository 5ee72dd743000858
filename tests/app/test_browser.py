"""The app in a real browser: Debian's Chromium, driven by Playwright, against the real app on a
real TCP port and a real PostgreSQL.

What only a browser shows: which cookies it keeps and sends (HttpOnly, SameSite), what it does with
redirects, the back button and `Cache-Control: no-store`, what the Content-Security-Policy lets
the pages do, which `Sec-Fetch-Site` it sends on a form post from another site, and what the pages
look like. Every test also checks that the browser logged no console error, page error or CSP
violation (a refusal logs exactly the one "Failed to load resource" line for its 403 or 429), and
that no page made it ask for /favicon.ico.

Screenshots of each page, desktop and phone sized, are written to tests/screenshots/ on every run;
with UPDATE_SCREENSHOTS=1, the README's pictures in docs/ are replaced by the new ones.
Needs /usr/bin/chromium (`apt-get install chromium`); without it these tests skip, except under
CI=true, where they fail. Playwright's own browser download is never used.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect
from support.demo import add_user, make_settings

from app.config import Settings
from app.server import create_app

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    if os.environ.get("CI") == "true":
        pytest.fail(
            f"{CHROMIUM} is missing, and CI=true: browser tests must run in CI (apt-get install -y chromium)",
            pytrace=False,
        )
    pytest.skip("browser tests need Chromium at /usr/bin/chromium: apt-get install chromium", allow_module_level=True)

pytestmark = pytest.mark.browser

# Never fetch Playwright's own browser build: Debian's Chromium is the browser.
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Playwright turns the back/forward cache off by default; people's browsers have it on, and
# the back button after logout is one of the things tested here.
IGNORE_DEFAULT_ARGS = ["--disable-back-forward-cache"]

SCREENSHOTS = Path(__file__).resolve().parents[1] / "screenshots"
LOGIN_PAGE = "/public/login.html"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
FAILED_LOAD = "Failed to load resource: the server responded with a status of {status}"
FORBIDDEN, TOO_MANY = "403 (Forbidden)", "429 (Too Many Requests)"
# Report CSP violations as console errors even if Chromium's own message ever changed.
CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error(`CSP violation: ${event.violatedDirective} ${event.blockedURI}`);
});
"""


@dataclass
class Hit:
    method: str
    path: str
    fetch_site: str | None


@dataclass
class Served:
    """An app listening on a real port, with every request it received."""

    base: str
    hits: list[Hit] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base + path

    def paths(self) -> list[str]:
        return [hit.path for hit in self.hits]


def recorder(hits: list[Hit]) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        hits.append(Hit(request.method, request.path, request.headers.get("Sec-Fetch-Site")))
        return await handler(request)

    return record


@pytest.fixture
def serve(aiohttp_server: Callable[..., Awaitable[Any]]) -> Callable[[Settings], Awaitable[Served]]:
    """`await serve(settings)`: the real app on 127.0.0.1 and a free port."""

    async def start(settings: Settings) -> Served:
        app = await create_app(settings)
        served = Served("")
        app.middlewares.insert(0, recorder(served.hits))  # outermost: sees even the 404s
        server = await aiohttp_server(app, host="127.0.0.1")
        served.base = f"http://127.0.0.1:{server.port}"
        return served

    return start


@pytest.fixture
async def app(serve: Callable[[Settings], Awaitable[Served]], settings: Settings) -> Served:
    return await serve(settings)


@dataclass
class Chromium:
    browser: Browser
    # (page URL, text) of every console error, page error and CSP violation, in every context.
    errors: list[tuple[str, str]] = field(default_factory=list)

    @property
    def major(self) -> str:
        return self.browser.version.split(".")[0]

    async def context(self, device: str = "desktop") -> BrowserContext:
        """A fresh profile ("device"). Headless Chromium calls itself HeadlessChrome; we give it
        the User-Agent of the desktop or phone browser a person would have."""
        if device == "desktop":
            context = await self.browser.new_context(
                viewport=DESKTOP,
                user_agent=f"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                f"Chrome/{self.major}.0.0.0 Safari/537.36",
            )
        else:
            context = await self.browser.new_context(
                viewport=PHONE,
                is_mobile=True,
                has_touch=True,
                user_agent=f"Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
                f"Chrome/{self.major}.0.0.0 Mobile Safari/537.36",
            )
        await context.add_init_script(CSP_LISTENER)
        context.on("page", self._watch)
        return context

    def _watch(self, page: Page) -> None:
        page.on("console", lambda message: message.type == "error" and self.errors.append((page.url, message.text)))
        page.on("pageerror", lambda error: self.errors.append((page.url, f"page error: {error}")))

    async def new_errors(self, since: int, expected: int) -> list[tuple[str, str]]:
        """The errors logged after the first `since`, once `expected` of them have arrived and
        nothing more came for a moment (console events arrive asynchronously)."""
        for _ in range(50):
            if len(self.errors) - since >= expected:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        return self.errors[since:]


@pytest.fixture
async def chromium(request: pytest.FixtureRequest) -> AsyncIterator[Chromium]:
    """Chromium with its back/forward cache on, as people have it (indirect parameter
    "no-bfcache": off, so that history navigations go through the HTTP cache instead)."""
    bfcache = getattr(request, "param", "bfcache") == "bfcache"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=LAUNCH_ARGS, ignore_default_args=IGNORE_DEFAULT_ARGS if bfcache else []
        )
        try:
            yield Chromium(browser)
        finally:
            await browser.close()


# The README's pictures: these screenshots, copied to docs/ when UPDATE_SCREENSHOTS=1.
README_PICTURES = {"login-desktop": "login.png", "home-desktop": "home.png", "sessions-desktop": "sessions.png"}
DOCS = Path(__file__).resolve().parents[2] / "docs"


async def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=path, full_page=True)
    if name in README_PICTURES and os.environ.get("UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(path, DOCS / README_PICTURES[name])


async def log_in(page: Page, app: Served, username: str, password: str) -> None:
    """As a person does: open the site, get sent to the form, type, click."""
    await page.goto(app.url("/"))
    await expect(page).to_have_url(app.url(LOGIN_PAGE))
    await expect(page.get_by_label("Username")).to_be_focused()  # autofocus: just start typing
    await page.get_by_label("Username").press_sequentially(username)
    await page.get_by_label("Password").press_sequentially(password)
    await page.get_by_role("button", name="Log in").click()


async def submit_login(page: Page, username: str, password: str) -> None:
    """The login form on the page the browser is on, filled and sent."""
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()


async def expect_greeting(page: Page, app: Served, username: str) -> None:
    await expect(page).to_have_url(app.url("/"))
    await expect(page.get_by_role("heading", level=1)).to_have_text(f"Hello {username}")


async def expect_login_form(page: Page, app: Served, *, signed_out: bool = False) -> None:
    """The login form; `signed_out`: reached by logging out, which it says."""
    await expect(page).to_have_url(app.url(LOGIN_PAGE + ("?signed-out=1" if signed_out else "")))
    await expect(page.get_by_role("heading", level=1)).to_have_text("Log in")
    signed_out_notice = page.get_by_text("You have signed out.")
    await (expect(signed_out_notice).to_be_visible() if signed_out else expect(signed_out_notice).to_be_hidden())
    await expect(page.get_by_role("button", name="Log in")).to_be_visible()
    await expect(page.get_by_text("Hello")).to_have_count(0)


async def session_cookies(context: Any) -> list[dict[str, Any]]:
    """The browser's session cookies (the device cookie a login leaves, by design, is not one)."""
    return [c for c in await context.cookies() if c["name"] != "device"]


async def session_count(pg: asyncpg.Connection) -> int:
    """Session rows, not the tombstones of sessions a login used up."""
    return await pg.fetchval("SELECT count(*) FROM sessions WHERE replaced_at IS NULL")


def assert_clean(chromium: Chromium, *apps: Served) -> None:
    assert chromium.errors == [], "console errors, page errors or CSP violations"
    for app in apps:
        assert "/favicon.ico" not in app.paths(), "a page without an icon link made Chromium ask for /favicon.ico"


async def test_login_survives_reload_and_reopening_the_page(
    chromium: Chromium, app: Served, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    for signed_in, device in enumerate(("desktop", "phone"), start=1):
        context = await chromium.context(device)
        page = await context.new_page()
        await page.goto(app.url(LOGIN_PAGE))
        await screenshot(page, f"login-{device}")
        # Keyboard users see where they are: Tab reaches the "Remember me" box, then the
        # button, which shows a focus ring.
        await page.keyboard.press("Tab")
        await page.keyboard.press("Tab")
        await expect(page.get_by_label("Remember me on this device")).to_be_focused()
        await page.keyboard.press("Tab")
        await expect(page.get_by_role("button", name="Log in")).to_be_focused()
        ring = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert ring not in ("none", ""), ring

        await log_in(page, app, *user)
        await expect_greeting(page, app, "alice")
        await expect(page.get_by_role("link", name="Your sessions")).to_be_visible()
        await screenshot(page, f"home-{device}")
        assert await session_count(pg) == signed_in

        # The browser holds the session cookie, but page scripts cannot read it.
        cookies = {cookie["name"]: cookie for cookie in await context.cookies()}
        assert cookies["session"]["httpOnly"] is True
        assert cookies["session"]["sameSite"] == "Lax"
        assert "session=" not in await page.evaluate("document.cookie")

        await page.reload()
        await expect_greeting(page, app, "alice")
        await page.close()
        page = await context.new_page()
        await page.goto(app.url("/"))
        await expect_greeting(page, app, "alice")
        assert await session_count(pg) == signed_in
    assert_clean(chromium, app)


async def test_wrong_password_shows_the_error_and_sets_no_session(
    chromium: Chromium, app: Served, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    for device in ("desktop", "phone"):
        context = await chromium.context(device)
        page = await context.new_page()
        await log_in(page, app, "alice", user[1] + "x")

        await expect(page).to_have_url(app.url(LOGIN_PAGE + "?error=1"))
        alert = page.get_by_role("alert")
        await expect(alert).to_be_visible()
        await expect(alert).to_have_text("Invalid username or password")
        # The username is kept (so only the password is typed again); the password never is.
        await expect(page.get_by_label("Username")).to_have_value("alice")
        await expect(page.get_by_label("Password")).to_have_value("")
        await expect(page.get_by_label("Password")).to_be_focused()
        assert "alice" not in page.url
        await screenshot(page, f"login-error-{device}")
        assert await session_cookies(context) == []
        assert await session_count(pg) == 0
        # The form right after the error works.
        await submit_login(page, *user)
        await expect_greeting(page, app, "alice")
        await pg.execute("DELETE FROM sessions")
    assert_clean(chromium, app)


@pytest.mark.parametrize("chromium", ["bfcache", "no-bfcache"], indirect=True)
async def test_logout_returns_to_the_form_and_back_does_not_show_private_pages(
    chromium: Chromium, app: Served, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    """Chromium keeps pages in its back/forward cache, even no-store ones, and restores them
    after a logout made from the page itself; with that cache off, Back reuses whatever the
    HTTP cache holds. Either way no signed-in page may come back after logout."""
    # Straight from the greeting to the form, then Back.
    context = await chromium.context()
    page = await context.new_page()
    await log_in(page, app, *user)
    await expect_greeting(page, app, "alice")
    await page.get_by_role("button", name="Log out").click()
    await expect_login_form(page, app, signed_out=True)
    assert await session_count(pg) == 0
    assert await session_cookies(context) == []
    await page.go_back(wait_until="commit")
    await expect_login_form(page, app)
    await context.close()

    # Through the sessions page and back home, then the form, then Back twice.
    context = await chromium.context()
    page = await context.new_page()
    await log_in(page, app, *user)
    await expect_greeting(page, app, "alice")
    await page.get_by_role("link", name="Your sessions").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Your sessions")
    # Back and Forward while signed in show the pages as they are.
    await page.go_back(wait_until="commit")
    await expect_greeting(page, app, "alice")
    await page.go_forward(wait_until="commit")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Your sessions")
    await page.get_by_role("link", name="Back to home").click()
    await expect_greeting(page, app, "alice")

    await page.get_by_role("button", name="Log out").click()
    await expect_login_form(page, app, signed_out=True)
    assert await session_count(pg) == 0
    assert await session_cookies(context) == []

    # Back to the home page's history entry, then to the sessions page's: the form each time.
    await page.go_back(wait_until="commit")
    await expect_login_form(page, app)
    await page.go_back(wait_until="commit")
    await expect_login_form(page, app)
    assert "alice" not in await page.content()
    assert_clean(chromium, app)


async def test_sessions_page_on_one_device_revokes_the_other(
    chromium: Chromium, app: Served, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    laptop = await (await chromium.context("desktop")).new_page()
    phone = await (await chromium.context("phone")).new_page()
    await log_in(laptop, app, *user)
    await expect_greeting(laptop, app, "alice")
    await log_in(phone, app, *user)
    await expect_greeting(phone, app, "alice")
    assert await session_count(pg) == 2
    # The laptop was last used three minutes ago (as far as the server knows).
    await pg.execute(
        "UPDATE sessions SET last_seen_at = now() - interval '3 minutes 10 seconds'"
        " WHERE user_agent NOT LIKE '%Android%'"
    )

    await phone.get_by_role("link", name="Your sessions").click()
    await expect(phone).to_have_url(app.url("/sessions"))
    await expect(phone.get_by_role("heading", level=1)).to_have_text("Your sessions")
    rows = phone.locator("tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0)).to_contain_text("Chrome Mobile on Android")
    await expect(rows.nth(0)).to_contain_text("this device")
    await expect(rows.nth(0)).to_contain_text("127.0.0.1")
    await expect(rows.nth(0)).to_contain_text("last active just now")
    await expect(rows.nth(1)).to_contain_text("Chrome on Linux")
    await expect(rows.nth(1)).to_contain_text("last active 3 minutes ago")
    await expect(rows.nth(1)).not_to_contain_text("this device")
    await screenshot(phone, "sessions-phone")

    # From the laptop. The phone was used more recently than the laptop (whose last request,
    # within the touch interval, is not rewritten by this visit): by recency the phone would come
    # first; this device is listed first all the same, marked.
    await pg.execute(
        "UPDATE sessions SET last_seen_at = now() - interval '5 seconds' WHERE user_agent LIKE '%Android%'"
    )
    await pg.execute(
        "UPDATE sessions SET last_seen_at = now() - interval '30 seconds' WHERE user_agent NOT LIKE '%Android%'"
    )
    await laptop.get_by_role("link", name="Your sessions").click()
    rows = laptop.locator("tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0)).to_contain_text("this device")
    await expect(rows.nth(0)).to_contain_text("Chrome on Linux")
    await expect(rows.nth(1)).to_contain_text("Chrome Mobile on Android")
    await expect(rows.nth(1)).not_to_contain_text("this device")
    await screenshot(laptop, "sessions-desktop")
    await rows.nth(1).get_by_role("button", name="Revoke").click()
    await expect(laptop).to_have_url(app.url("/sessions"))
    await expect(laptop.get_by_role("status")).to_have_text("Signed out 1 session.")
    await expect(rows).to_have_count(1)
    await expect(rows.nth(0)).to_contain_text("this device")
    assert await session_count(pg) == 1
    # The notice is shown once.
    await laptop.reload()
    await expect(laptop.get_by_role("status")).to_have_count(0)

    # A third device, then "sign out all other sessions" from the laptop: it says how many.
    tablet = await (await chromium.context("phone")).new_page()
    await log_in(tablet, app, *user)
    await expect_greeting(tablet, app, "alice")
    await laptop.reload()
    await laptop.get_by_role("button", name="Sign out all other sessions").click()
    await expect(laptop.get_by_role("status")).to_have_text("Signed out 1 other session.")
    await expect(rows).to_have_count(1)

    # The phone's next navigation lands on the login form; the laptop is still signed in.
    await phone.goto(app.url("/"))
    await expect_login_form(phone, app)
    await laptop.goto(app.url("/"))
    await expect_greeting(laptop, app, "alice")
    assert_clean(chromium, app)


async def test_an_idle_session_ends_and_sends_the_user_to_the_form(
    chromium: Chromium, serve: Callable[[Settings], Awaitable[Served]], db_url: str, user: tuple[str, str]
) -> None:
    app = await serve(make_settings(db_url, idle_timeout=1, touch_interval=0, absolute_timeout=60))
    context = await chromium.context()
    page = await context.new_page()
    await log_in(page, app, *user)
    await expect_greeting(page, app, "alice")

    await asyncio.sleep(1.5)
    # The browser still has and sends its cookie (a browser-session cookie: "Remember me" was
    # left unticked, so it lasts while the browser runs); the server no longer accepts it.
    assert [c["name"] for c in await session_cookies(context)] == ["session"]
    await page.reload()
    await expect_login_form(page, app)
    assert_clean(chromium, app)


async def test_remember_me_is_a_box_that_makes_the_cookie_outlive_the_browser(
    chromium: Chromium, serve: Callable[[Settings], Awaitable[Served]], db_url: str, user: tuple[str, str]
) -> None:
    """Unticked (as the page opens), the session cookie is a browser-session cookie (Chromium
    reports expires -1); ticked by clicking its label, it lasts SESSION_REMEMBER_TIMEOUT."""
    app = await serve(make_settings(db_url, remember_timeout=86400, remember_idle_timeout=3600))
    context = await chromium.context()
    page = await context.new_page()
    await log_in(page, app, *user)
    await expect_greeting(page, app, "alice")
    assert [c["expires"] for c in await session_cookies(context)] == [-1]

    other = await chromium.context()
    page = await other.new_page()
    await page.goto(app.url("/"))
    await expect(page.get_by_label("Remember me on this device")).not_to_be_checked()
    await page.get_by_label("Username").fill(user[0])
    await page.get_by_label("Password").fill(user[1])
    await page.get_by_text("Remember me on this device").click()
    await expect(page.get_by_label("Remember me on this device")).to_be_checked()
    await page.get_by_role("button", name="Log in").click()
    await expect_greeting(page, app, "alice")
    (cookie,) = await session_cookies(other)
    assert 86390 <= cookie["expires"] - time.time() <= 86401
    assert_clean(chromium, app)


@pytest.mark.parametrize(
    ("attacker_host", "fetch_site"),
    [("localhost", "cross-site"), ("127.0.0.1", "same-site")],
    ids=["other-site", "same-site-other-port"],
)
async def test_form_posts_from_another_origin_are_refused(
    chromium: Chromium,
    app: Served,
    user: tuple[str, str],
    pg: asyncpg.Connection,
    aiohttp_server: Callable[..., Awaitable[Any]],
    attacker_host: str,
    fetch_site: str,
) -> None:
    await add_user(pg, "mallory", "mallory-password")
    attacker = Served("")

    async def attack_page(request: web.Request) -> web.Response:
        # Deliberately no icon link: Chromium then asks this server for /favicon.ico, which
        # shows the check that the app's pages never cause that request can see one.
        return web.Response(
            content_type="text/html",
            text=f"""<!doctype html><title>Win a prize</title>
<form method="post" action="{app.url("/logout")}"><button>Claim your prize</button></form>
<form method="post" action="{app.url("/login")}">
<input type="hidden" name="username" value="mallory"><input type="hidden" name="password" value="mallory-password">
<button>Claim another prize</button></form>""",
        )

    async def no_icon(request: web.Request) -> web.Response:
        return web.Response(status=204)  # answered, so the attacker page itself logs no error

    evil = web.Application(middlewares=[recorder(attacker.hits)])
    evil.router.add_get("/", attack_page)
    evil.router.add_get("/favicon.ico", no_icon)
    evil_server = await aiohttp_server(evil, host="127.0.0.1")
    attacker.base = f"http://{attacker_host}:{evil_server.port}"

    context = await chromium.context()
    page = await context.new_page()
    await log_in(page, app, *user)
    await expect_greeting(page, app, "alice")
    cookie_before = next(c["value"] for c in await context.cookies() if c["name"] == "session")

    for button, path in (("Claim your prize", "/logout"), ("Claim another prize", "/login")):
        await page.goto(attacker.url("/"))
        before, hits_before = len(chromium.errors), len(app.hits)
        async with page.expect_response(app.url(path)) as refused:
            await page.get_by_role("button", name=button).click()
        assert (await refused.value).status == 403
        await expect(page.get_by_role("heading", level=1)).to_have_text("Forbidden")
        await expect(page.get_by_role("alert")).to_have_text("Cross-origin request refused.")
        # Exactly the one error Chromium logs for the 403 itself.
        assert [text for _, text in await chromium.new_errors(before, 1)] == [FAILED_LOAD.format(status=FORBIDDEN)]
        # What Chromium sent, as the app received it: the refusal is the app's decision.
        assert [(h.method, h.fetch_site) for h in app.hits[hits_before:] if h.path == path] == [("POST", fetch_site)]
        del chromium.errors[before:]
    if attacker_host == "localhost":
        await screenshot(page, "forbidden-desktop")

    # Still alice, same session, and nobody else's session was started.
    assert await session_count(pg) == 1
    assert next(c["value"] for c in await context.cookies() if c["name"] == "session") == cookie_before
    await page.goto(app.url("/"))
    await expect_greeting(page, app, "alice")
    assert "/favicon.ico" in attacker.paths(), "Chromium asks for /favicon.ico when a page has no icon link"
    assert_clean(chromium, app)


async def test_repeated_failed_logins_are_throttled_with_429(
    chromium: Chromium, app: Served, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    context = await chromium.context()
    page = await context.new_page()
    await log_in(page, app, "alice", "not-the-password")
    for _ in range(4):
        await expect(page).to_have_url(app.url(LOGIN_PAGE + "?error=1"))
        await expect(page.get_by_role("alert")).to_have_text("Invalid username or password")
        async with page.expect_navigation():
            await submit_login(page, "alice", "not-the-password")
    await expect(page.get_by_role("alert")).to_have_text("Invalid username or password")
    assert chromium.errors == []
    assert await pg.fetchval("SELECT count(*) FROM login_failures") == 5

    # Even the right password is refused now, and the page says what to do.
    await submit_login(page, *user)
    await expect(page.get_by_role("heading", level=1)).to_have_text("Too many attempts")
    await expect(page.get_by_role("alert")).to_contain_text("Please wait about 15 minutes")
    await screenshot(page, "too-many-attempts-desktop")
    assert [text for _, text in await chromium.new_errors(0, 1)] == [FAILED_LOAD.format(status=TOO_MANY)]
    assert await session_count(pg) == 0
    assert await session_cookies(context) == []
    chromium.errors.clear()
    await page.get_by_role("link", name="Back to the login form").click()
    await expect_login_form(page, app)
    assert_clean(chromium, app)


async def test_the_console_check_sees_a_csp_violation(chromium: Chromium, app: Served) -> None:
    """The "no CSP violations" checks above can fail: an inline style on one of our pages is
    refused by the policy and reported."""
    page = await (await chromium.context()).new_page()
    await page.goto(app.url(LOGIN_PAGE))
    assert chromium.errors == []
    await page.evaluate("document.head.insertAdjacentHTML('beforeend', '<style>body { color: red }</style>')")
    errors = await chromium.new_errors(0, 1)
    assert any(re.search(r"CSP violation: style-src", text) for _, text in errors), errors
