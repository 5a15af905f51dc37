"""The web page driven in headless Chromium (Debian's chromium + chromium-driver, through selenium).

A person's path: fill the form, upload (and drag and drop) an image, read the rating, see the image the model
saw; upload a CSV, get the scored CSV and a histogram. The numbers are checked against the API and
`predict`. Without a browser this skips with the reason, except under CI=true, where it fails.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

from effiminivlm.serving.local import LocalServer
from effiminivlm.serving.predict import predict

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER = ("/usr/bin/chromedriver",)


def _find(paths: tuple[str, ...], name: str) -> str | None:
    return next((p for p in paths if os.path.exists(p)), None) or shutil.which(name)


@pytest.fixture(scope="module")
def browser():
    chrome, driver = _find(CHROMIUM, "chromium"), _find(DRIVER, "chromedriver")
    if chrome is None or driver is None:
        reason = "Debian chromium + chromium-driver not installed (make setup installs them)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("selenium is not installed (dev extra)")
        pytest.skip("selenium is not installed (dev extra)")
    profile = tempfile.mkdtemp(prefix="effiminivlm-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1200,1150"):
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def server(serve_model, lovif):
    from effiminivlm.serving.app import create_app
    from effiminivlm.serving.schemas import ServeSettings
    from effiminivlm.serving.scorer import Scorer

    scorer = Scorer.from_pretrained(serve_model, num_workers=0, batch_size=64)
    app = create_app(scorer, ServeSettings(images_dir=(lovif / "images").resolve(), max_batch=64))
    with LocalServer(app) as srv:
        yield srv


def _wait(drv, css: str, timeout: float = 20.0):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, timeout).until(ec.visibility_of_element_located((By.CSS_SELECTOR, css)))


LISTING = {"main_category": "AMAZON FASHION", "title": "Trailmark Leather Baseball Cap",
           "features": ["Made of full-grain leather", "Imported"], "description": "A cap built to last."}


def test_form_with_an_uploaded_image_shows_the_apis_rating(browser, server, lovif, tmp_path):
    from selenium.webdriver.common.by import By

    image = (lovif / "images" / "B0PLCFQS7N.jpg").resolve()
    browser.get(server.url + "/")
    _wait(browser, "#listing-form")
    browser.find_element(By.ID, "category").send_keys(LISTING["main_category"])
    browser.find_element(By.ID, "title").send_keys(LISTING["title"])
    browser.find_element(By.ID, "features").send_keys("\n".join(LISTING["features"]))
    browser.find_element(By.ID, "description").send_keys(LISTING["description"])
    browser.find_element(By.ID, "image").send_keys(str(image))
    browser.find_element(By.ID, "score-btn").click()
    _wait(browser, "#seen")
    shown = browser.find_element(By.ID, "score").text
    exact = float(browser.find_element(By.ID, "result").get_attribute("data-score"))
    api = httpx.post(server.url + "/v1/score", json=[{**LISTING, "images": ["B0PLCFQS7N.jpg"]}]).json()
    assert exact == api["items"][0]["score"] and shown == f"{exact:.2f}"
    assert "text and the image" in browser.find_element(By.ID, "image-status").text
    seen = browser.find_element(By.ID, "seen")
    assert seen.get_attribute("src").startswith("data:image/png;base64,")
    assert browser.execute_script("return arguments[0].naturalWidth", seen) > 0
    info = browser.find_element(By.ID, "model-info").text
    assert "M params" in info and "GFLOPs" in info
    browser.save_screenshot(str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").stat().st_size > 10_000
    if os.environ.get("EFFIMINIVLM_SCREENSHOT"):  # refresh docs/serve_page.png on purpose only
        browser.find_element(By.ID, "csv").send_keys(str((lovif / "input.csv").resolve()))
        browser.find_element(By.ID, "csv-btn").click()
        _wait(browser, "#csv-result")
        browser.save_screenshot(os.environ["EFFIMINIVLM_SCREENSHOT"])


def test_dropped_image_scores_like_the_uploaded_one(browser, server, lovif):
    from selenium.webdriver.common.by import By

    body = (lovif / "images" / "B0PLCFQS7N.jpg").read_bytes()
    browser.get(server.url + "/")
    _wait(browser, "#listing-form")
    browser.find_element(By.ID, "title").send_keys(LISTING["title"])
    browser.find_element(By.ID, "category").send_keys(LISTING["main_category"])
    browser.find_element(By.ID, "features").send_keys("\n".join(LISTING["features"]))
    browser.find_element(By.ID, "description").send_keys(LISTING["description"])
    browser.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "dropped.jpg", {type: "image/jpeg"}));
        const drop = new DragEvent("drop", {dataTransfer: dt, bubbles: true});
        document.getElementById("drop").dispatchEvent(drop);
    """, base64.b64encode(body).decode())
    assert "dropped.jpg" in browser.find_element(By.ID, "drop-text").text
    browser.find_element(By.ID, "score-btn").click()
    _wait(browser, "#seen")
    exact = float(browser.find_element(By.ID, "result").get_attribute("data-score"))
    api = httpx.post(server.url + "/v1/score", json=[{**LISTING, "images": ["B0PLCFQS7N.jpg"]}]).json()
    assert exact == api["items"][0]["score"]


def test_csv_round_trip_gives_predicts_csv_and_a_histogram(browser, server, serve_model, lovif, tmp_path):
    from selenium.webdriver.common.by import By

    out = tmp_path / "submission.csv"
    predict(serve_model, [str(lovif / "input.csv")], out, batch_size=64, num_workers=0, progress=False)
    browser.get(server.url + "/")
    _wait(browser, "#csv-form")
    browser.find_element(By.ID, "csv").send_keys(str((lovif / "input.csv").resolve()))
    browser.find_element(By.ID, "csv-btn").click()
    _wait(browser, "#csv-result")
    link = browser.find_element(By.ID, "csv-download")
    got = [line.rsplit(",", 1) for line in link.get_attribute("data-csv").splitlines()]
    assert "".join(f"{kept}\n" for kept, _ in got) == out.read_text()  # predict's file, byte for byte,
    assert {status for _, status in got[1:]} == {"ok"}  # plus each row's image status
    assert link.get_attribute("download") == "input_scored.csv"
    assert browser.find_element(By.ID, "csv-summary").text.startswith("160 listings scored")
    painted = browser.execute_script("""
        const c = document.getElementById("hist");
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height);
        let n = 0; for (let i = 0; i < d.data.length; i += 4) if (d.data[i + 2] === 223) n++; return n;""")
    assert painted > 100  # histogram bars (#2f6fdf) drawn
    browser.save_screenshot(str(tmp_path / "csv.png"))


def test_an_error_is_shown_not_swallowed(browser, server, tmp_path):
    from selenium.webdriver.common.by import By

    bad = tmp_path / "bad.csv"
    bad.write_text("title\nx\n")
    browser.get(server.url + "/")
    _wait(browser, "#csv-form")
    browser.find_element(By.ID, "csv").send_keys(str(bad))
    browser.find_element(By.ID, "csv-btn").click()
    err = _wait(browser, "#csv-error")
    assert err.text.startswith("422:") and "bad.csv" in err.text and Path(str(bad)).name in err.text
