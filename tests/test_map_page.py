"""The map page in a real headless chromium against a real `bentoml serve`.

Set MAP_SCREENSHOT=path to photograph the page as the test leaves the example drawn
(`make map-screenshot`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from support import Serve, free_port

from heimdall.serving.map_page import content_security_policy
from heimdall.training.examples import example_captures, request_body
from heimdall.training.simulate import simulate_scenes

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[1] / "heimdall" / "serving" / "map" / "example.json"
WORLD = 256.0  # the page's Web Mercator world width (map.js)
# map.js writes polygon vertices with three decimals (half a thousandth of a pixel); the rest
# is float64 arithmetic done in two languages.
VERTEX_TOLERANCE_PX = 2e-3


def project(lon: float, lat: float) -> tuple[float, float]:
    """Web Mercator world units, as the page projects: x east, y south."""
    s = math.sin(math.radians(lat))
    return WORLD * (lon + 180) / 360, WORLD * (0.5 - math.log((1 + s) / (1 - s)) / (4 * math.pi))


@pytest.fixture(scope="module")
def serve(reference_tag, tmp_path_factory) -> Iterator[Serve]:
    service = Serve(reference_tag, tmp_path_factory.mktemp("map") / "serve.log")
    yield service
    service.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    missing = [tool for tool in ("chromium", "chromedriver") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not installed: run `make browser`")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    # Debian's chromedriver: with a driver path Selenium does not go looking for one to download.
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    yield driver
    driver.quit()


def _expect_change(driver: webdriver.Chrome) -> None:
    """Marks the status as stale before an action, so `_wait_for` cannot read the previous answer's."""
    driver.execute_script("document.getElementById('status').dataset.state = 'stale'")


def _wait_for(driver: webdriver.Chrome, state: str) -> None:
    WebDriverWait(driver, 60).until(
        lambda d: d.find_element(By.ID, "status").get_attribute("data-state") in (state, "error")
    )
    status = driver.find_element(By.ID, "status")
    assert status.get_attribute("data-state") == state, status.text


def _predict_answers(driver: webdriver.Chrome) -> list[dict]:
    """The bodies of the POST /predict responses the page received since the last call."""
    answers = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] != "Network.responseReceived":
            continue
        if httpx.URL(message["params"]["response"]["url"]).path != "/predict":
            continue
        body = driver.execute_cdp_cmd(
            "Network.getResponseBody", {"requestId": message["params"]["requestId"]}
        )
        answers.append(json.loads(body["body"]))
    return answers


def _drawn_ellipse(driver: webdriver.Chrome) -> tuple[list[tuple[float, float]], dict[str, float]]:
    svg = driver.find_element(By.ID, "map")
    view = {k: float(svg.get_attribute(f"data-{k}")) for k in ("x0", "y0", "scale")}
    points = driver.find_element(By.ID, "ellipse").get_attribute("points").split()
    return [tuple(map(float, p.split(","))) for p in points], view


def _assert_ellipse_is(driver: webdriver.Chrome, answer: dict) -> None:
    """The polygon on the page is the answer's GeoJSON ring, projected the page's way."""
    drawn, view = _drawn_ellipse(driver)
    ring = answer["ellipse"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(drawn) == len(ring) - 1
    for (lon, lat), (px, py) in zip(ring[:-1], drawn, strict=True):
        x, y = project(lon, lat)
        assert (view["scale"] * (x - view["x0"]), view["scale"] * (y - view["y0"])) == pytest.approx(
            (px, py), abs=VERTEX_TOLERANCE_PX
        )
    # and it lies inside the map's frame, not off screen
    frame = driver.find_element(By.ID, "map").rect
    assert all(0 <= px <= frame["width"] and 0 <= py <= frame["height"] for px, py in drawn)


def _assert_numbers_are(driver: webdriver.Chrome, answer: dict) -> None:
    text = {
        cell: driver.find_element(By.ID, f"n-{cell}").text for cell in ("lat", "lon", "major", "receivers")
    }
    assert text["lat"] == f"{answer['lat']:.5f}°" and text["lon"] == f"{answer['lon']:.5f}°"
    assert text["major"].startswith(f"{answer['uncertainty']['semi_major_m'] / 1000:.1f}")
    assert text["receivers"].startswith(f"{len(answer['receivers'])} of ")
    used = driver.find_elements(By.CSS_SELECTOR, "#map .station.used")
    assert sorted(s.get_attribute("data-id") for s in used) == sorted(answer["receivers"])


def test_page_draws_the_answer_it_was_given(serve, browser, tmp_path):
    browser.get(f"{serve.url}/v1/map")
    _wait_for(browser, "drawn")
    (answer,) = _predict_answers(browser)
    assert answer["uncertainty"]["confidence_level"] == 0.95
    stations = browser.find_elements(By.CSS_SELECTOR, "#map .station")
    assert len(stations) == len(httpx.get(f"{serve.url}/v1/model").json()["receivers"])
    _assert_ellipse_is(browser, answer)
    _assert_numbers_are(browser, answer)
    assert int(browser.find_element(By.ID, "scale-bar").get_attribute("data-metres")) > 0
    if os.environ.get("MAP_SCREENSHOT"):
        assert browser.save_screenshot(os.environ["MAP_SCREENSHOT"])

    # Another confidence level: a new request, and an ellipse scaled by the 2-D chi-square ratio.
    _expect_change(browser)
    Select(browser.find_element(By.ID, "level")).select_by_value("0.5")
    _wait_for(browser, "drawn")
    (half,) = _predict_answers(browser)
    assert half["uncertainty"]["confidence_level"] == 0.5
    ratio = half["uncertainty"]["semi_major_m"] / answer["uncertainty"]["semi_major_m"]
    assert ratio == pytest.approx(math.sqrt(math.log(2) / math.log(20)))
    _assert_ellipse_is(browser, half)

    # A capture file the user brings, heard by four receivers only.
    scenes = simulate_scenes(8, seed=777)
    i = next(i for i in range(len(scenes)) if scenes.heard[i].sum() >= 3)
    captures = dict(list(scenes.capture_set(i).items())[:4])
    capture_file = tmp_path / "capture.json"
    capture_file.write_text(json.dumps(request_body(captures)))
    _expect_change(browser)
    browser.find_element(By.ID, "capture-file").send_keys(str(capture_file))
    _wait_for(browser, "drawn")
    (theirs,) = _predict_answers(browser)
    assert sorted(theirs["receivers"]) == sorted(captures)
    _assert_ellipse_is(browser, theirs)
    _assert_numbers_are(browser, theirs)

    # "Show the estimate" fits the view to the ellipse: the same vertices, drawn larger.
    browser.find_element(By.CSS_SELECTOR, "input[name=fit][value=estimate]").click()
    _assert_ellipse_is(browser, theirs)
    drawn, _ = _drawn_ellipse(browser)
    frame = browser.find_element(By.ID, "map").rect
    assert max(x for x, _ in drawn) - min(x for x, _ in drawn) > frame["width"] / 3

    # A file the service refuses: its one error format, shown on the page.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"captures": [{"station": "nowhere", "iq": "AAAA"}]}))
    _expect_change(browser)
    browser.find_element(By.ID, "capture-file").send_keys(str(bad))
    _wait_for(browser, "error")
    assert "nowhere" in browser.find_element(By.ID, "status").text

    severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    # the refused file's 400 is the only error the console saw: no policy violation, no script error
    assert len(severe) == 1 and "/predict" in severe[0] and "400" in severe[0], severe


def test_page_and_assets_carry_a_strict_policy(serve):
    page = httpx.get(f"{serve.url}/v1/map")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert policy == content_security_policy(None)
    assert "default-src 'none'" in policy and "unsafe" not in policy
    assert 'data-tile-url=""' in page.text
    script = httpx.get(f"{serve.url}/v1/map/map.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.headers["x-content-type-options"] == "nosniff"
    unknown = httpx.get(f"{serve.url}/v1/map/settings.py")
    assert unknown.status_code == 404
    assert set(unknown.json()) == {"error", "field", "received", "expected", "reason"}


class _TileServer(BaseHTTPRequestHandler):
    """Answers /{z}/{x}/{y}.svg with a plain tile and remembers what was asked."""

    requested: list[str] = []
    TILE = (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="256" height="256">'
        b'<rect width="256" height="256" fill="#dfe8d8" stroke="#9ab"/></svg>'
    )

    def do_GET(self) -> None:
        self.requested.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/svg+xml")
        self.send_header("Content-Length", str(len(self.TILE)))
        self.end_headers()
        self.wfile.write(self.TILE)

    def log_message(self, *args: object) -> None:
        pass


def test_tiles_come_from_the_configured_server_only(reference_tag, browser, tmp_path):
    tiles = ThreadingHTTPServer(("127.0.0.1", free_port()), _TileServer)
    threading.Thread(target=tiles.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{tiles.server_port}"
    env = {
        "HEIMDALL_MAP_TILE_URL": origin + "/{z}/{x}/{y}.svg",
        "HEIMDALL_MAP_TILE_ATTRIBUTION": "test tiles",
    }
    serve = Serve(reference_tag, tmp_path / "serve.log", extra_env=env)
    try:
        page = httpx.get(f"{serve.url}/v1/map")
        assert f"img-src 'self' {origin};" in page.headers["content-security-policy"]
        for log in ("performance", "browser"):  # what earlier pages left
            browser.get_log(log)
        browser.get(f"{serve.url}/v1/map")
        _wait_for(browser, "drawn")
        assert browser.find_element(By.ID, "attribution").text == "test tiles"
        assert not browser.find_elements(By.CSS_SELECTOR, "#map .graticule")
        images = browser.find_elements(By.CSS_SELECTOR, "#map .tiles image")
        assert images
        svg = browser.find_element(By.ID, "map")
        view = {k: float(svg.get_attribute(f"data-{k}")) for k in ("x0", "y0", "scale")}
        for image in images:
            z, x, y = map(
                int, re.fullmatch(rf"{origin}/(\d+)/(\d+)/(\d+)\.svg", image.get_attribute("href")).groups()
            )
            # each tile sits where its top-left corner projects
            corner = (
                view["scale"] * (x * WORLD / 2**z - view["x0"]),
                view["scale"] * (y * WORLD / 2**z - view["y0"]),
            )
            assert (float(image.get_attribute("x")), float(image.get_attribute("y"))) == pytest.approx(corner)
        WebDriverWait(browser, 10).until(lambda _: len(set(_TileServer.requested)) >= len(images))
        assert {f"/{h.split('/', 3)[3]}" for h in (i.get_attribute("href") for i in images)} <= set(
            _TileServer.requested
        )
        severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
    finally:
        serve.stop()
        tiles.shutdown()
        tiles.server_close()


def test_tile_server_is_the_only_other_origin():
    policy = content_security_policy("https://tiles.example.org/{z}/{x}/{y}.png")
    assert "img-src 'self' https://tiles.example.org;" in policy
    assert "connect-src 'self';" in policy and "script-src 'self';" in policy


def test_committed_example_is_the_example_capture_set():
    assert json.loads(EXAMPLE.read_text()) == request_body(example_captures()), (
        "heimdall/serving/map/example.json is stale: "
        "run `heimdall example > heimdall/serving/map/example.json`"
    )
