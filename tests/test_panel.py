"""The service panel in a real browser (Debian's Chromium, driven by Playwright) against a real server.

The page is loaded from the barmaid under test, on its own port (http://127.0.0.1:PORT/, the
WebSocket's), as a builder opens it. Pumps run at 100 ml/s here, so pours last a few tenths of a
second: long enough to be seen, short enough for the suite.

Without Chromium or the playwright package these tests skip, saying how to run them; with
BARMAID_BROWSER_TESTS=required (as .ci/run sets) they fail instead.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from support.peer import Peer
from support.pumps import fast_pumps
from support.timing import TOLERANCE
from support.waiting import eventually

from barmaid import panel
from barmaid.config import Config, load_config
from barmaid.drivers.simulated import SimulatedDriver
from barmaid.errors import PumpsUnavailable
from barmaid.server import BarmaidServer

CHROMIUM = Path("/usr/bin/chromium")
#: No downloaded browser: Debian's, without anything that reaches out to the network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FLOW_ML_S = 100.0
PRIME_ML = 10.0
CAPACITY_ML = 700.0
TOKEN = "party-secret-42"
RUM = "white rum"
#: Longest wait for the page to show something; a healthy panel does it in milliseconds.
WAIT_MS = 5000


# ---- panel.respond, no browser needed -----------------------------------------------------


@pytest.mark.parametrize(
    ("path", "content_type", "starts"),
    [
        ("/", "text/html", b"<!doctype html>"),
        ("/?ws=ws://127.0.0.1:1/", "text/html", b"<!doctype html>"),
        ("/index.html", "text/html", b"<!doctype html>"),
        ("/panel.js", "text/javascript", b"// barmaid service panel"),
        ("/panel.css", "text/css", b"/* barmaid service panel"),
    ],
)
def test_respond_serves_the_panel_files(path: str, content_type: str, starts: bytes) -> None:
    status, kind, body = panel.respond(path)
    assert status == 200 and kind.startswith(content_type) and body.startswith(starts)


@pytest.mark.parametrize(
    "path",
    ["/panel.py", "/../pyproject.toml", "/panel/../panel.py", "/%2e%2e/server.py", "//etc/passwd",
     "/panel/index.html", "/favicon.ico", "/PANEL.JS", "", "/panel.js/"],
)
def test_respond_answers_none_for_anything_else(path: str) -> None:
    assert panel.respond(path) is None


def test_the_panel_loads_nothing_from_elsewhere() -> None:
    """No CDN, no web font, no external script: the machine is often offline at a party."""
    for path in ("/", "/panel.js", "/panel.css"):
        text = panel.respond(path)[2].decode()
        assert not re.search(r"""(src|href)=["']?(https?:)?//|@import|url\(\s*["']?https?:""", text), path


def test_the_readme_shows_the_panel() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    pictures = re.findall(r"!\[[^]]+\]\((docs/panel[^)]*\.png)\)", readme)
    assert pictures and all((Path(__file__).parent.parent / picture).is_file() for picture in pictures)


# ---- a browser, the panel's files and a slower barmaid --------------------------------------


def _browser_missing() -> Optional[str]:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed"
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM}"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the whole module."""
    missing = _browser_missing()
    if missing:
        how = "apt-get install -y chromium (Debian's; no browser is downloaded) and .venv/bin/pip install -e '.[test]'"
        if os.environ.get("BARMAID_BROWSER_TESTS") == "required":
            pytest.fail(f"browser tests are required here but {missing}: {how}")
        pytest.skip(f"browser tests skipped: {missing}; to run them: {how}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def slow_config(write_config: Callable[..., Path], **server: Any) -> Config:
    pumps = [dict(pump, capacity_ml=CAPACITY_ML) for pump in fast_pumps(FLOW_ML_S, PRIME_ML)]
    pumps[0]["name"] = RUM
    config = load_config(write_config({"pumps": pumps}), {"server": {"host": "127.0.0.1", "status_interval": 0.05, **server}})
    return config.model_copy(update={"server": config.server.model_copy(update={"port": 0})})


@pytest.fixture
def start_barmaid(write_config: Callable[..., Path], serve_config: Callable[..., BarmaidServer]) -> Callable[..., BarmaidServer]:
    """Starts a BarmaidServer with 8 simulated pumps at 100 ml/s, bottles of 700 ml."""

    def start(driver: type[SimulatedDriver] = SimulatedDriver, **server: Any) -> BarmaidServer:
        config = slow_config(write_config, **server)
        return serve_config(config, driver.for_config(config))

    return start


@pytest.fixture(scope="module")
def context(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 800, "height": 480})
    yield context
    context.close()


class Frames:
    """The WebSocket frames a page sent and received, decoded."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []

    def watch(self, ws: Any) -> None:
        ws.on("framesent", lambda payload: self.sent.append(json.loads(payload)))
        ws.on("framereceived", lambda payload: self.received.append(json.loads(payload)))


@pytest.fixture(scope="module")
def browser_tab(context: Any) -> Iterator[Any]:
    """One tab for the module: a new tab per test cost about 0.4 s of the browser's CPU more than
    loading the next test's panel into this one."""
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    yield page
    page.close()


@pytest.fixture
def open_panel(browser_tab: Any) -> Iterator[Callable[..., Any]]:
    """Loads the panel from a barmaid's own port into the module's tab (each test's barmaid has
    its own port, so its own origin and sessionStorage; cleared anyway at the end, in case the
    port comes round again); `page.frames_seen` records its WebSocket traffic. At the end, leaves
    the panel (its connection closes before its server does) and fails the test if the page's
    script threw anything."""
    page = browser_tab
    thrown: list[str] = []
    frames = Frames()
    watch = frames.watch

    def on_error(error: Any) -> None:
        thrown.append(str(error))

    def open_page(barmaid: BarmaidServer, width: int = 800, height: int = 480) -> Any:
        page.on("pageerror", on_error)
        page.frames_seen = frames
        page.on("websocket", watch)
        page.set_viewport_size({"width": width, "height": height})
        page.goto(f"http://127.0.0.1:{barmaid.port}/")
        page.get_by_test_id("link").filter(has_text="online").wait_for()
        page.get_by_test_id("pump-7").wait_for()
        return page

    yield open_page
    if page.url.startswith("http"):
        page.evaluate("() => sessionStorage.clear()")
    page.goto("about:blank")
    page.remove_listener("pageerror", on_error)
    page.remove_listener("websocket", watch)
    assert not thrown, f"the panel's script threw: {thrown}"


@pytest.fixture
def barmaid(start_barmaid: Callable[..., BarmaidServer]) -> BarmaidServer:
    return start_barmaid()


def expect_text(page: Any, test_id: str, pattern: str) -> None:
    """Waits until the element's text matches the regular expression."""
    page.wait_for_function(
        "([id, pattern]) => { const e = document.querySelector(`[data-testid='${id}']`);"
        " return e !== null && new RegExp(pattern).test(e.textContent); }",
        arg=[test_id, pattern],
    )


def tab(page: Any, name: str) -> None:
    page.get_by_role("button", name=name, exact=True).click()


def drawn_bars(page: Any) -> list[dict[str, float]]:
    """The first timeline's bars: pump, planned and actual seconds, as the SVG draws them."""
    return page.eval_on_selector(
        "[data-testid='timeline']",
        """svg => [...svg.querySelectorAll('rect.planned')].map(p => ({
            pump: +p.dataset.pump, planned: +p.dataset.seconds,
            actual: +svg.querySelector(`rect.actual[data-pump='${p.dataset.pump}']`).dataset.seconds,
            planned_px: +p.getAttribute('width'),
            actual_px: +svg.querySelector(`rect.actual[data-pump='${p.dataset.pump}']`).getAttribute('width')}))""",
    )


# ---- the panel in the browser ---------------------------------------------------------------


def test_pumps_show_name_level_flow_startup_and_refill_fills_the_bottle(open_panel, barmaid: BarmaidServer) -> None:
    page = open_panel(barmaid)
    assert page.get_by_test_id("pumps").locator("article").count() == 8
    expect_text(page, "machine", "^idle")
    expect_text(page, "flow-2", r"^100\.0 ml/s$")
    expect_text(page, "dead-2", r"^0\.00 s$")
    expect_text(page, "level-2", "not tracked")
    assert page.get_by_test_id("pump-0").locator(".name").inner_text() == RUM  # the config's name
    assert page.get_by_test_id("pump-2").locator(".name").inner_text() == "Pump 2"  # not named
    page.get_by_test_id("refill-2").click()
    expect_text(page, "level-2", r"^690 of 700 ml$")  # a full bottle less what priming took
    tab(page, "History")
    expect_text(page, "history", r"refill.*Pump 2 10\.0 / 10\.0.*completed")
    assert barmaid.controller.pumps[2].level_ml == pytest.approx(CAPACITY_ML - PRIME_ML)


def test_prime_fills_the_tube_and_takes_what_it_drew_off_the_level(open_panel, barmaid: BarmaidServer) -> None:
    page = open_panel(barmaid)
    page.get_by_test_id("level-input-1").fill("300")
    page.get_by_test_id("level-save-1").click()
    expect_text(page, "level-1", r"^300 of 700 ml$")
    page.get_by_test_id("prime-1").click()
    tab(page, "History")
    expect_text(page, "history", r"prime.*completed")
    # Priming keeps the bottle (no reset to full) but takes what it drew off its level.
    expect_text(page, "level-1", rf"^{300 - PRIME_ML:.0f} of 700 ml$")
    expect_text(page, "sim-1", rf"^simulated: {PRIME_ML:.1f} ml poured$")


def test_the_panel_learns_from_welcome_and_matches_every_reply_by_id(open_panel, barmaid: BarmaidServer) -> None:
    """No probing: hello first, every request with an id and data it accepts, no error at connect."""
    page = open_panel(barmaid)
    frames = page.frames_seen
    page.get_by_test_id("refill-3").click()
    expect_text(page, "level-3", r"^690 of 700 ml$")
    assert frames.sent[0]["type"] == "hello" and "data" not in frames.sent[0]  # no token stored: never fails
    assert [f for f in frames.received if f["type"] == "error"] == []
    ids = [f["id"] for f in frames.sent]
    assert len(set(ids)) == len(ids) and all(isinstance(i, str) for i in ids)
    assert all(f["type"] not in ("prime", "reset_calibration") for f in frames.sent)
    started = next(f for f in frames.received if f["type"] == "started")
    assert started["id"] == next(f["id"] for f in frames.sent if f["type"] == "refill")


def test_the_same_origin_may_connect_whatever_allowed_origins_says(open_panel, start_barmaid) -> None:
    barmaid = start_barmaid(allowed_origins=["http://gui.example"])
    page = open_panel(barmaid)
    page.get_by_test_id("refill-6").click()
    expect_text(page, "level-6", r"^690 of 700 ml$")


def test_stop_ends_a_calibration_and_its_timeline_is_shorter_than_planned(open_panel, barmaid: BarmaidServer) -> None:
    page = open_panel(barmaid)
    tab(page, "Calibrate")
    page.get_by_test_id("cal-s1").fill("30")
    page.get_by_test_id("cal-run1").click()
    expect_text(page, "machine", "^calibrating")
    expect_text(page, "onoff-0", "^ON$")
    tab(page, "Timeline")
    page.locator("[data-testid='timeline'][data-outcome='running'] line.now").wait_for(state="attached")
    page.get_by_test_id("stop").click()
    expect_text(page, "toast", "stopped the calibrate")
    expect_text(page, "machine", "^idle")
    expect_text(page, "onoff-0", "^off$")
    assert barmaid.controller.state == "idle" and not barmaid.controller.driver.playing()
    page.locator("[data-testid='timeline'][data-outcome='stopped']").wait_for()
    expect_text(page, "timeline-outcome", "^stopped$")
    (bar,) = drawn_bars(page)
    assert bar["pump"] == 0 and bar["planned"] == pytest.approx(30.0)
    assert 0 < bar["actual"] < 10 and bar["actual_px"] < bar["planned_px"] / 3


def test_calibration_wizard_runs_twice_sets_the_flow_and_shows_the_fit(open_panel, barmaid: BarmaidServer) -> None:
    page = open_panel(barmaid)
    tab(page, "Calibrate")
    page.get_by_test_id("cal-pump").select_option("3")
    page.get_by_test_id("cal-s1").fill("0.2")
    page.get_by_test_id("cal-run1").click()
    expect_text(page, "cal-note", r"ran 0\.20 s")
    page.get_by_test_id("cal-ml1").fill("20")
    page.get_by_test_id("cal-save1").click()
    page.get_by_test_id("cal-s2").fill("0.4")
    page.get_by_test_id("cal-run2").click()
    expect_text(page, "cal-note", r"ran 0\.40 s")
    page.get_by_test_id("cal-ml2").fill("44")
    page.get_by_test_id("cal-save2").click()
    # 20 ml in 0.2 s and 44 ml in 0.4 s: 120 ml/s after a start-up of 0.2 - 20/120 = 0.03 s.
    expect_text(page, "cal-line", r"fit of 2 runs: 120\.0 ml/s, start-up 0\.03 s")
    assert eventually(lambda: barmaid.controller.pumps[3].flow_ml_s != FLOW_ML_S)
    expect_text(page, "flow-3", rf"^{barmaid.controller.pumps[3].flow_ml_s:.1f} ml/s$")
    expect_text(page, "dead-3", r"^0\.03 s$")
    assert page.locator("[data-testid='cal-fit'] circle").count() == 2
    # Two points lie on their line: the server's residuals are 0.
    assert page.get_by_test_id("cal-point").all_inner_texts() == ["1\t0.20\t20.0\t+0.00", "2\t0.40\t44.0\t+0.00"]
    page.get_by_test_id("cal-reset").click()
    expect_text(page, "cal-note", "forgotten")
    expect_text(page, "flow-3", r"^100\.0 ml/s$")
    assert page.get_by_test_id("cal-point").count() == 0


def test_a_third_run_shows_each_points_residual_from_the_server(open_panel, barmaid: BarmaidServer) -> None:
    page = open_panel(barmaid)
    tab(page, "Calibrate")
    for run, (seconds, ml) in enumerate([(0.2, 20), (0.4, 40), (0.3, 36)]):
        box = 1 if run % 2 == 0 else 2
        page.get_by_test_id(f"cal-s{box}").fill(str(seconds))
        page.get_by_test_id(f"cal-run{box}").click()
        expect_text(page, "cal-note", rf"ran {seconds:.2f} s")
        page.get_by_test_id(f"cal-ml{box}").fill(str(ml))
        page.get_by_test_id(f"cal-save{box}").click()
        expect_text(page, "cal-note", "^Saved")
    expect_text(page, "cal-line", "fit of 3 runs")
    law = barmaid.controller.pumps[0]
    expect_text(page, "cal-line", rf"{law.flow_ml_s:.1f} ml/s, start-up {law.dead_s:.2f} s")
    residuals = [p.residual_ml for p in law.points]
    shown = [row.split("\t")[3] for row in page.get_by_test_id("cal-point").all_inner_texts()]
    assert shown == [f"{r:+.2f}" for r in residuals] and any(abs(r) > 0.5 for r in residuals)


def test_errors_say_busy_with_retry_in_and_bottle(open_panel, barmaid: BarmaidServer) -> None:
    page = open_panel(barmaid)
    page.get_by_test_id("level-input-2").fill("5")
    page.get_by_test_id("level-save-2").click()
    expect_text(page, "level-2", r"^5 of 700 ml$")
    page.get_by_test_id("prime-2").click()  # 10 ml from a bottle of 5
    expect_text(page, "toast", r"^bottle too low: pump 2 needs 10\.0 ml")
    gui = Peer.at(barmaid.port)
    try:
        gui.send({"type": "calibrate", "data": {"pump": 0, "seconds": 30}})
        expect_text(page, "machine", "^calibrating")
        page.evaluate("() => document.querySelector(\"[data-testid='refill-4']\").disabled = false")  # a click racing the state
        page.get_by_test_id("refill-4").click()
        expect_text(page, "toast", r"^busy: Already calibrating ! Retry in \d+ sec \(try again in \d+ s\)$")
        page.get_by_test_id("stop").click()
        expect_text(page, "machine", "^idle")
    finally:
        gui.close()


class HardwareOff(SimulatedDriver):
    """Simulated pumps whose daemon cannot be reached: every pour is refused as unavailable."""

    @property
    def available(self) -> bool:
        return False

    def pour(self, plan: Any) -> float:
        raise PumpsUnavailable("the pumps are unavailable: the test's daemon is switched off")


def test_pumps_offline_from_hardware_and_the_unavailable_error(open_panel, start_barmaid) -> None:
    barmaid = start_barmaid(driver=HardwareOff)
    page = open_panel(barmaid)
    expect_text(page, "machine", r"^idle · pumps offline$")
    page.get_by_test_id("refill-1").click()
    expect_text(page, "toast", r"^pumps offline: the pumps are unavailable")
    assert barmaid.controller.pumps[1].level_ml is None  # nothing moved, nothing counted


def test_levels_and_timeline_after_a_blend_from_another_screen(open_panel, barmaid: BarmaidServer) -> None:
    page = open_panel(barmaid)
    page.get_by_test_id("level-input-1").fill("500")
    page.get_by_test_id("level-save-1").click()
    expect_text(page, "level-1", r"^500 of 700 ml$")
    gui = Peer.at(barmaid.port)
    try:
        gui.send({"type": "blend", "data": {"cup_size": 0.05, "ratios": {"1": 0.4, "5": 0.6}}})
        gui.recv_until()
    finally:
        gui.close()
    expect_text(page, "level-1", r"^480 of 700 ml$")  # 20 ml poured
    expect_text(page, "level-5", "not tracked")
    tab(page, "Timeline")
    page.locator("[data-testid='timeline'][data-outcome='completed']").wait_for()
    bars = drawn_bars(page)
    assert [b["pump"] for b in bars] == [1, 5]
    assert [b["planned"] for b in bars] == pytest.approx([0.2, 0.3], abs=0.01)
    assert [b["actual"] for b in bars] == pytest.approx([0.2, 0.3], abs=TOLERANCE)
    assert bars[1]["planned_px"] > bars[0]["planned_px"]


def test_cleaning_runs_the_chosen_pumps_and_leaves_levels(open_panel, barmaid: BarmaidServer) -> None:
    page = open_panel(barmaid)
    tab(page, "Clean")
    page.get_by_test_id("clean-s").fill("0.1")
    for pump in range(2, 8):
        page.get_by_test_id(f"clean-{pump}").uncheck()
    page.get_by_test_id("clean-start").click()
    tab(page, "History")
    expect_text(page, "history", r"clean.*white rum 10\.0 / 10\.0, Pump 1 10\.0 / 10\.0.*completed")


def test_with_a_token_the_panel_asks_once_per_session(open_panel, start_barmaid) -> None:
    barmaid = start_barmaid(token=TOKEN)
    page = open_panel(barmaid)
    dialog = page.get_by_test_id("token-dialog")
    dialog.wait_for()
    page.get_by_test_id("stop").click()  # stopping is never locked, not even behind the dialog
    expect_text(page, "toast", "nothing was running")
    page.get_by_test_id("token").fill("wrong-token-1")
    page.get_by_test_id("token-submit").click()
    expect_text(page, "token-note", "wrong token")
    dialog.wait_for()
    page.get_by_test_id("token").fill(TOKEN)
    page.get_by_test_id("token-submit").click()
    dialog.wait_for(state="hidden")
    page.get_by_test_id("refill-4").click()
    expect_text(page, "level-4", r"^690 of 700 ml$")
    page.reload()
    page.get_by_test_id("link").filter(has_text="online").wait_for()
    page.get_by_test_id("refill-5").click()
    expect_text(page, "level-5", r"^690 of 700 ml$")
    assert not dialog.is_visible()


def test_stop_stays_in_view_and_nothing_overflows_on_a_phone_and_the_touchscreen(open_panel, barmaid: BarmaidServer) -> None:
    page = open_panel(barmaid)
    for width, height in [(480, 800), (800, 480)]:
        page.set_viewport_size({"width": width, "height": height})
        for name in ("pumps", "timeline", "calibrate", "clean", "history"):
            # One round trip per page: show it, scroll to its end, measure STOP and the page's width.
            seen = page.evaluate(
                """name => { document.querySelector(`.tab[data-tab='${name}']`).click();
                    window.scrollTo(0, document.body.scrollHeight);
                    const stop = document.querySelector("[data-testid='stop']").getBoundingClientRect();
                    return {top: stop.top, bottom: stop.bottom, right: stop.right,
                            width: document.documentElement.scrollWidth, scrolled: window.scrollY}; }""",
                name,
            )
            where = f"{name} at {width}x{height}: {seen}"
            assert seen["top"] >= 0 and seen["bottom"] <= height and seen["right"] <= width, where
            assert seen["width"] <= width, where
            assert name != "pumps" or seen["scrolled"] > 0, where  # 8 pumps do not fit: STOP stayed while scrolled


