"""The HTML report of a small real run, opened in a real browser (Debian's Chromium, driven by Playwright): no
JavaScript error, every table sorts on a header click, every image loads, the matrices, galleries and plots are
there, and no column of a matrix is cut off at 390 px or 1400 px. Screenshots of both widths are written to
``tests/artifacts/``. `.ci/run` installs Chromium when it is missing; elsewhere these tests skip without it."""

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from giabench.app import cli
from giabench.leaderboard.report import label

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).parent / "artifacts"
#: a leaderboard.html to run the defense-summary test on instead of the small run (e.g. runs/default's, for the
#: README's screenshot: GIABENCH_REPORT=runs/default/leaderboard.html pytest tests/test_report_browser.py -k summary)
OTHER_REPORT = os.environ.get("GIABENCH_REPORT")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium)")

SUITE = """
name: browser
defaults:
  dataset: mnist-sample
  model: {name: mlp, width: 16}
  attack: {name: ig, iterations: 20, tv: 0.0}
grid:
  attack: [{name: ig, iterations: 20, tv: 0.0}, {name: idlg, iterations: 20}]
  defense: [none, {name: dp-sgd, sweep: true}, {name: prune, fraction: 0.9}]
  seed: [0, 1, 2]
"""
UTILITY = """
dataset: mnist-sample
model: {name: mlp, width: 16}
protocol: fedsgd
clients: 2
rounds: 2
batch: 4
test_fraction: 0.4
tune: {server_lr: [0.1, 0.5]}
defenses:
  - {name: dp-sgd, sweep: true}
  - {name: prune, fraction: 0.9}
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("browser")
    (folder / "s.yaml").write_text(SUITE)
    (folder / "u.yaml").write_text(UTILITY)
    assert cli.main(["utility", str(folder / "u.yaml"), "--out", str(folder / "utility"), "--quiet"]) == 0
    assert cli.main(["run", str(folder / "s.yaml"), "--out", str(folder / "run"), "--quiet"]) == 0
    assert cli.main(["leaderboard", str(folder / "run"), "--utility", str(folder / "utility" / "utility.csv")]) == 0
    return folder / "run" / "leaderboard.html"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                            "--disable-component-update", "--no-first-run", "--disable-sync"])
        yield chromium
        chromium.close()


def _open(browser, report: Path, width: int):
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(report.as_uri())
    page.wait_for_load_state("load")
    return page, errors


def test_the_report_loads_without_errors_with_every_part_and_image(browser, report):
    page, errors = _open(browser, report, 1400)
    assert errors == []
    assert page.locator("table.matrix").count() == 1
    assert page.locator(".set").count() >= 6 and page.locator(".tiles img").count() >= 18  # galleries
    assert page.locator(".plot svg").count() == 5  # privacy-utility, 3 frontier plots, PSNR-epsilon
    broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")
    assert broken == 0 and page.evaluate("document.images.length") > 40
    sizes = page.evaluate("Array.from(document.querySelectorAll('.tiles figure img'))"
                          ".map(i => i.getBoundingClientRect().width)")
    assert min(sizes) >= 96
    assert "accuracy" in page.locator("table.matrix").inner_text()  # the utility run's accuracy per defense
    page.close()


def test_a_header_click_sorts_every_table_both_ways(browser, report):
    page, errors = _open(browser, report, 1400)
    tables = page.locator("table.sortable")
    assert tables.count() == 6  # defense summary, frontiers, privacy audit, privacy-utility, ranking, label track
    for t in range(tables.count()):
        table = tables.nth(t)
        headers = table.locator("thead th")
        for h in range(headers.count()):
            keys = table.locator(f"tbody tr td:nth-child({h + 1})")
            values = [keys.nth(i).get_attribute("data-v") for i in range(keys.count())]
            if len(set(values)) < 2:
                continue
            headers.nth(h).click()
            ascending = [keys.nth(i).get_attribute("data-v") for i in range(keys.count())]
            headers.nth(h).click()
            descending = [keys.nth(i).get_attribute("data-v") for i in range(keys.count())]
            assert ascending == _sorted(values) and descending == _sorted(values, reverse=True), (t, h)
    assert errors == []
    page.close()


def _sorted(values, reverse=False):
    def key(v):
        try:
            return (0, float(v), "")
        except ValueError:
            return (0 if v else 1, 0.0, v)

    filled = sorted((v for v in values if v != ""), key=key, reverse=reverse)
    return filled + [v for v in values if v == ""]


@pytest.mark.parametrize("width", [390, 1400])
def test_no_matrix_column_is_cut_off(browser, report, width):
    page, errors = _open(browser, report, width)
    right = page.evaluate("Math.max(...Array.from(document.querySelectorAll('table.matrix td, table.matrix th'))"
                          ".filter(e => e.offsetParent).map(e => e.getBoundingClientRect().right))")
    assert right <= width and page.evaluate("document.documentElement.scrollWidth") <= width
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"report-{width}.png"))
    page.screenshot(path=str(ARTIFACTS / f"report-{width}-full.png"), full_page=True)
    assert errors == []
    page.close()


def test_the_filter_box_hides_rows_and_a_gallery_tile_enlarges(browser, report):
    page, _ = _open(browser, report, 1400)
    ranking = page.locator("#ranking + .scroll table tbody tr")
    total = ranking.count()
    page.fill("#filter", "prune")
    visible = page.evaluate("Array.from(document.querySelectorAll('#ranking + .scroll table tbody tr'))"
                            ".filter(r => r.style.display !== 'none').length")
    assert 0 < visible < total
    page.fill("#filter", "")
    tile = page.locator(".tiles a").first
    target = tile.get_attribute("href")
    tile.click()
    assert page.locator(target).is_visible()
    page.close()


def test_the_defense_summary_leads_sorted_by_leakage_with_every_defense_setting(browser, report):
    """The report opens with one row per defense setting of the run, most leakage first."""
    html = Path(OTHER_REPORT).resolve() if OTHER_REPORT else report
    page, errors = _open(browser, html, 1400)
    first = page.evaluate("document.querySelector('h2').id")
    assert first == "defenses"
    table = page.locator("#defense-summary")
    heads = [h.strip() for h in table.locator("thead th").all_inner_texts()]
    psnr = heads.index("psnr") + 1
    values = [float(v) for v in table.locator(f"tbody tr td:nth-child({psnr})").evaluate_all(
        "cells => cells.map(c => c.dataset.v)")]
    assert values == sorted(values, reverse=True) and len(values) > 1
    cells = pd.read_csv(html.parent / "leaderboard.csv", dtype={"defense_params": str})
    scored = cells[(cells["status"] == "ok") & cells["psnr"].notna()]
    shown = table.locator(f"tbody tr td:nth-child({heads.index('defense') + 1})").all_inner_texts()
    settings = {label("defenses", d, p) for d, p in zip(scored["defense"], scored["defense_params"], strict=True)}
    assert sorted(shown) == sorted(settings)  # each setting once, labelled with the parameters it changes
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#answer").screenshot(path=str(ARTIFACTS / "defense-summary.png"))
    assert errors == []
    page.close()


def test_the_frontier_of_a_swept_defense_is_drawn_and_tabled(browser, report):
    """DP-SGD swept along its noise multiplier: a frontier of its 4 points and the undefended one, in the table and
    in both frontier plots."""
    page, errors = _open(browser, report, 1400)
    rows = page.locator("#frontier-table tbody tr")
    assert rows.count() == 5
    points = page.locator("#frontier-table tbody tr td:nth-child(3)").all_inner_texts()
    assert points == ["no defense"] + [f"noise_multiplier={z}" for z in (0.3, 1.0, 3.0, 10.0)]
    plots = page.locator('.plot[aria-label^="Frontiers"], .plot[aria-label="Accuracy against epsilon"]')
    assert plots.count() == 3
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#frontiers").screenshot(path=str(ARTIFACTS / "frontiers-table.png"))
    plots.first.screenshot(path=str(ARTIFACTS / "frontiers.png"))
    assert errors == []
    page.close()
