"""Open a generated report in headless Chromium, offline, and check what a reader sees.

Needs ``chromium`` and ``chromedriver`` (``scripts/install_chromium.sh``); skips otherwise.
"""
from __future__ import annotations

import shutil

import pytest

webdriver = pytest.importorskip("selenium.webdriver")

from pytest_invariance.report import write_report
from pytest_invariance.report._sample import SAMPLE_SHA, sample_document, sample_history, sample_plots

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="chromium/chromedriver not found; run scripts/install_chromium.sh",
)


@pytest.fixture()
def driver(tmp_path):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 # every host name fails to resolve: a stray external URL could not load
                 "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1280,1600",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    drv.set_network_conditions(offline=True, latency=0, download_throughput=0, upload_throughput=0)
    try:
        yield drv
    finally:
        drv.quit()


def test_report_renders_offline(driver, tmp_path):
    from selenium.webdriver.common.by import By

    doc = sample_document(attribute="<script>alert(1)</script>")
    report = write_report(doc, tmp_path / "index.html", plots=sample_plots(), history=sample_history(doc))
    driver.get(report.as_uri())

    assert driver.find_element(By.ID, "model-sha256").text == SAMPLE_SHA
    counts = {k: driver.find_element(By.ID, f"count-{k}").text for k in ("checks", "pass", "fail", "error")}
    assert counts == {"checks": "7", "pass": "3", "fail": "2", "error": "1"}
    assert driver.find_element(By.CSS_SELECTOR, "section.check .badge").text == "FAIL"  # worst first

    images = driver.find_elements(By.CSS_SELECTOR, "img.plot")
    assert len(images) == 5
    for img in images:
        natural = driver.execute_script("return [arguments[0].complete, arguments[0].naturalWidth]", img)
        assert natural[0] and natural[1] > 0, img.get_attribute("alt")
        assert img.size["width"] > 100 and img.size["height"] > 50
    assert driver.find_elements(By.CSS_SELECTOR, "svg.spark circle.current")

    # the attribute name was shown as text, not run as a script
    assert driver.execute_script("return document.scripts.length") == 0
    # (textContent: the attribute sits in a collapsed <details>, which .text skips)
    assert "<script>alert(1)</script>" in driver.execute_script("return document.body.textContent")

    resources = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert [r for r in resources if not r.startswith(("data:", "file:"))] == []

    shot = tmp_path / "report.png"
    assert driver.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000

    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []


def test_depth_matrix_and_paper_figures_render(driver, tmp_path):
    """The overview matrix, the depth curves and paper Fig. 3/4 are drawn, offline, without errors."""
    from selenium.webdriver.common.by import By

    from test_report_depth import LAYERS, depth_doc, per_digit_doc

    import numpy as np

    doc, _ = per_digit_doc(np.random.default_rng(0))
    doc["checks"] += [c for c in depth_doc()["checks"] if c["layer"] != "ip1"]
    doc["run"]["models"]["lenet"]["layers"] = LAYERS
    driver.get(write_report(doc, tmp_path / "index.html").as_uri())

    matrix = driver.find_element(By.ID, "overview-matrix")
    heads = [th.text for th in matrix.find_elements(By.CSS_SELECTOR, "th.col")]
    assert heads == ["lenet · conv1", "lenet · conv2", "lenet · ip1", "mu_lenet · ip1", "pair_lenet · ip1"]
    cell = matrix.find_element(By.CSS_SELECTOR, "td.cell a")
    target = cell.get_attribute("href").split("#", 1)[1]
    assert driver.find_element(By.ID, target).tag_name == "section"
    # the cell's colour is the margin's (rgb of margin_colour)
    assert cell.find_element(By.XPATH, "..").value_of_css_property("background-color").startswith("rgb")

    for selector, count in (("#depth ~ .depth-figure img.plot-depth_curves", 1),
                            ("#digit-figures img.plot-angle_error_bars", 1),
                            ("#digit-figures img.plot-error_bars", 1)):
        images = driver.find_elements(By.CSS_SELECTOR, selector)
        assert len(images) == count, selector
        for img in images:
            complete, width = driver.execute_script(
                "return [arguments[0].complete, arguments[0].naturalWidth]", img)
            assert complete and width > 200, img.get_attribute("alt")
            assert img.size["width"] > 200 and img.size["height"] > 100
    resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert [r for r in resources if not r.startswith(("data:", "file:"))] == []
    assert driver.save_screenshot(str(tmp_path / "depth.png"))
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
