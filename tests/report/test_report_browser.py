"""The report in a real browser: headless Chromium (Debian's package) driven by Playwright.

Every figure must render (Plotly's SVG in its div), the console must stay free of errors, the page
must fit 1280 px, and no two pieces of text in a figure may overlap. Screenshots go to tmp_path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.report.conftest import FIGURES

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
# Playwright must not download a browser: it drives the system Chromium, offline and quiet.
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
WIDTH = 1280

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
    ),
]  # a browser per figure: seconds each

ALL_RENDERED = """() => [...document.querySelectorAll('.plotly-graph-div')]
    .every(div => div.querySelector('.main-svg'))"""

# Pairs of visible text elements of one figure (titles, tick labels, legend, annotations) whose boxes
# overlap by more than a sliver: the automated half of "no overlapping text at 1280 px".
OVERLAPS = """(div) => {
    const boxes = [...div.querySelectorAll('.main-svg text')]
        .filter(t => t.textContent.trim() && t.getBBox().width > 0 && getComputedStyle(t).visibility !== 'hidden'
                     && getComputedStyle(t).opacity !== '0')
        .map(t => ({text: t.textContent.trim(), box: t.getBoundingClientRect()}));
    const out = [];
    for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
        const a = boxes[i], b = boxes[j];
        const w = Math.min(a.box.right, b.box.right) - Math.max(a.box.left, b.box.left);
        const h = Math.min(a.box.bottom, b.box.bottom) - Math.max(a.box.top, b.box.top);
        if (w > 2 && h > 2) out.push(a.text + ' <-> ' + b.text);
    }
    return out;
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


@pytest.mark.parametrize("name", ["many", "three", "robust", "empty", "finalized"])
def test_every_figure_renders_without_errors(browser: Any, reports: dict[str, Path], name: str, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": WIDTH, "height": 900})
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(reports[name].as_uri())
    with contextlib.suppress(sync_api.TimeoutError):  # the per-figure assertion below names what is missing
        page.wait_for_function(ALL_RENDERED, timeout=30_000)
    divs = page.locator(".plotly-graph-div")
    ids = [divs.nth(i).get_attribute("id") for i in range(divs.count())]
    assert ids == [f"fig-{key}" for key in FIGURES]
    missing = [i for i in ids if page.locator(f"#{i} .main-svg").count() == 0]
    assert not missing, f"figures without Plotly's SVG: {missing}"
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    assert not errors, errors
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH  # no sideways scrolling
    overlaps = {i: divs.nth(n).evaluate(OVERLAPS) for n, i in enumerate(ids)}
    assert not {i: o for i, o in overlaps.items() if o}, overlaps
    page.close()
