"""``wsi-mil view`` in a real browser: Debian's Chromium driven by Playwright for Python.

One Chromium and one server for the module; screenshots are read back as pixels. Skipped
only where no Chromium (or no Playwright) can be had; ``.ci/run`` installs Chromium.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.view_run import LESION, TISSUE, build_run, viewer_slides

pytestmark = pytest.mark.browser

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
VIEWPORT = {"width": 1280, "height": 720}


def chromium_path() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium: install Debian's package (apt-get install chromium; .ci/run does it)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright for Python is not installed (pip install playwright)"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, make_slide: Callable[..., Path]) -> Iterator[str]:
    from wsi_mil.view import running

    root = tmp_path_factory.mktemp("view_browser")
    run = build_run(root / "run", viewer_slides(make_slide), masks=root / "masks")
    with running(run, masks=root / "masks") as url:
        yield url


class Page:
    """A loaded viewer page with its console errors and tile responses recorded."""

    def __init__(self, browser: Any, url: str) -> None:
        self.url = url
        self.page = browser.new_page(viewport=VIEWPORT)
        self.errors: list[str] = []
        self.responses: list[tuple[str, int]] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("response", lambda r: self.responses.append((r.url, r.status)))
        self.page.goto(url)
        self.page.evaluate("() => window.wsiView.ready")
        self.settle()

    def settle(self) -> None:
        """Wait until OpenSeadragon has asked for and drawn every tile of the view."""
        self.frames(3)  # a change shows in getFullyLoaded() from the next drawn frame on
        self.page.wait_for_function("() => window.wsiView.loaded()", timeout=20000)
        self.frames(2)

    def frames(self, n: int) -> None:
        self.page.evaluate(
            "(n) => new Promise((done) => { const step = (k) => k ? requestAnimationFrame("
            "() => step(k - 1)) : done(); step(n); })",
            n,
        )

    def set_opacity(self, value: float) -> None:
        self.page.evaluate(
            "(v) => { const s = document.getElementById('opacity'); s.value = v;"
            " s.dispatchEvent(new Event('input')); }",
            value,
        )

    def choose(self, selector: str, value: str) -> None:
        self.page.select_option(selector, value)
        self.settle()

    def pixels(self) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(self.page.screenshot())).convert("RGB")).astype(int)

    def screen_point(self, x: float, y: float) -> tuple[int, int]:
        """Level-0 slide (x, y) -> page pixel."""
        box = self.page.locator("#osd").bounding_box()
        point = self.page.evaluate(
            "([x, y]) => { const p = window.wsiView.viewer.world.getItemAt(0)"
            ".imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y)); return [p.x, p.y]; }",
            [x, y],
        )
        return int(box["x"] + point[0]), int(box["y"] + point[1])

    def colour_at(self, pixels: np.ndarray, x: float, y: float) -> np.ndarray:
        """Mean RGB of a 5 x 5 px patch of the screenshot around slide point (x, y)."""
        col, row = self.screen_point(x, y)
        return pixels[row - 2 : row + 3, col - 2 : col + 3].reshape(-1, 3).mean(axis=0)


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Page]:
    viewer = Page(browser, server)
    yield viewer
    viewer.page.close()


LESION_CENTRE = (LESION[0] + LESION[2] / 2, LESION[1] + LESION[3] / 2)
NORMAL_TISSUE = (TISSUE[0] + TISSUE[2] - 256, TISSUE[1] + TISSUE[3] - 256)
GLASS = (TISSUE[0] / 2, TISSUE[1] / 2)


def test_page_loads_without_console_errors(page: Page) -> None:
    rows = page.page.locator("#slides tbody tr").all_inner_texts()
    assert any(r.startswith("lesion") and "tumor" in r and "0.98" in r for r in rows)
    assert any(r.startswith("broken") and "failed" in r for r in rows)
    assert page.page.locator("#legend-max").inner_text() != ""
    assert page.page.locator("#gallery figure").count() > 0
    assert page.errors == []
    assert all(url.startswith(page.url) for url, _ in page.responses)  # no CDN: everything from the viewer
    assert any(url.endswith("/static/openseadragon/openseadragon.min.js") for url, _ in page.responses)


def test_hot_at_the_lesion_cold_elsewhere(page: Page) -> None:
    page.set_opacity(1.0)
    page.settle()
    pixels = page.pixels()
    hot, cold, glass = (page.colour_at(pixels, *p) for p in (LESION_CENTRE, NORMAL_TISSUE, GLASS))
    assert hot[0] > hot[2] + 60, hot  # logit margin +8.8: red
    assert cold[2] > cold[0] + 20, cold  # -3.1: blue
    assert abs(glass[0] - glass[2]) < 20, glass  # no overlay on glass: the slide's grey shows
    assert page.errors == []


def test_switching_the_map_changes_the_overlay(page: Page) -> None:
    page.set_opacity(1.0)
    page.settle()
    before = page.pixels()
    page.choose("#map", "attention_pct")
    after = page.pixels()
    assert any("/map/abmil/attention_pct/" in url and status == 200 for url, status in page.responses)
    cold_before, cold_after = (page.colour_at(p, *NORMAL_TISSUE) for p in (before, after))
    assert np.abs(cold_before - cold_after).max() > 40, (cold_before, cold_after)
    assert page.colour_at(after, *LESION_CENTRE)[0] > 100  # jet's top is red too
    assert page.errors == []


def test_switching_the_head_changes_the_overlay(page: Page) -> None:
    """On one fixed scale (-9..9), ILAM's halved logits are a lighter red than ABMIL's."""
    page.set_opacity(1.0)
    page.page.fill("#vmin", "-9")
    page.page.fill("#vmax", "9")
    page.page.check("input[name=scale][value=fixed]")
    page.settle()
    before = page.colour_at(page.pixels(), *LESION_CENTRE)
    page.choose("#head", "ilam")
    after = page.colour_at(page.pixels(), *LESION_CENTRE)
    assert any("/map/ilam/logit_tumor/" in url and "vmax=9" in url for url, _ in page.responses)
    assert page.page.locator("#map").input_value() == "logit_tumor"
    assert before[0] > before[2] + 60 and after[0] > after[2] + 60, (before, after)
    assert after[1] > before[1] + 30, (before, after)  # lighter: RdBu_r towards white
    assert page.errors == []


def test_zoom_to_level_0(page: Page) -> None:
    max_level = page.page.evaluate("() => window.wsiView.state.info.max_level")
    page.page.evaluate(
        "([x, y]) => { const v = window.wsiView.viewer, item = v.world.getItemAt(0);"
        " v.viewport.zoomTo(item.imageToViewportZoom(1.0), undefined, true);"
        " v.viewport.panTo(item.imageToViewportCoordinates(x, y), true); }",
        list(LESION_CENTRE),
    )
    page.set_opacity(1.0)
    page.settle()
    level0 = [(url, status) for url, status in page.responses if f"/{max_level}/" in url]
    assert any("/image/" in url for url, _ in level0) and any("/map/" in url for url, _ in level0)
    assert all(status == 200 for _, status in level0)
    zoom = page.page.evaluate(
        "() => { const v = window.wsiView.viewer;"
        " return v.world.getItemAt(0).viewportToImageZoom(v.viewport.getZoom(true)); }"
    )
    assert zoom == pytest.approx(1.0, rel=0.01)
    centre = page.colour_at(page.pixels(), *LESION_CENTRE)
    assert centre[0] > centre[2] + 60
    assert page.errors == []


def test_scale_toggle_changes_colours(page: Page) -> None:
    page.page.locator("#slides tr", has_text="normal").first.click()
    page.page.wait_for_function("() => window.wsiView.state.slide === 'normal'")
    page.settle()
    page.choose("#map", "attention_raw")
    page.set_opacity(1.0)
    page.settle()

    def red_fraction() -> float:
        pixels = page.pixels()
        (c0, r0), (c1, r1) = (
            page.screen_point(TISSUE[0] + 64, TISSUE[1] + 64),
            page.screen_point(TISSUE[0] + TISSUE[2] - 64, TISSUE[1] + TISSUE[3] - 64),
        )
        tissue = pixels[r0:r1, c0:c1]
        return float((tissue[..., 0] > tissue[..., 2] + 60).mean())

    slide_scale = red_fraction()  # the normal slide's own range: its highest patches are red
    page.page.check("input[name=scale][value=cohort]")
    page.settle()
    cohort_scale = red_fraction()  # the cohort's range (the lesion reaches 6): all cold
    assert slide_scale > 0.02 and cohort_scale == 0.0, (slide_scale, cohort_scale)
    legend = page.page.locator("#legend-max").inner_text()
    assert float(legend) > 5
    assert page.errors == []


def test_traversal_urls_are_refused(browser: Any, server: str) -> None:
    """Through the browser's own HTTP stack (tests/test_view_http.py sends raw request lines)."""
    context = browser.new_context()
    try:
        for target in (
            "/run/..%2F..%2F..%2Fetc%2Fpasswd",
            "/static/..%2F..%2Fapp.py",
            "/run/%2Fetc%2Fpasswd",
            "/api/slides/..%2Fnormal/info",
            "/run/../../../../etc/passwd",
        ):
            response = context.request.get(server + target)
            assert response.status in (400, 404), target
            assert b"root:" not in response.body()
        assert context.request.get(server + "/run/manifest.csv").status == 200
    finally:
        context.close()
