"""The page's Discover view in headless Chromium (as tests/api/test_browser.py): find the
clusters of the collection, see them as rows of thumbnails, name one (the write key asked for
once), and the collection's labels follow."""

from __future__ import annotations

import json
import urllib.request

from tests.api.test_browser import (  # noqa: F401  (fixtures)
    _image_loaded,
    _screenshot,
    browser,
    start_server,
)


def test_discover_finds_and_names_clusters(start_server, browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base = start_server(
        discovery={"clusters_dir": str(tmp_path / "clusters")},
        api_key="read",
        write_api_key="write",
    )
    wait = WebDriverWait(browser, 60)
    browser.get(base + "/")
    prompt = wait.until(ec.alert_is_present())  # the page asks for the read key first
    prompt.send_keys("read")
    prompt.accept()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#collections li[data-name="shapes"]'))

    browser.find_element(By.ID, "discover-tab").click()
    assert browser.find_element(By.ID, "discover-view").is_displayed()
    assert not browser.find_element(By.TAG_NAME, "main").is_displayed()
    assert browser.find_element(By.ID, "discover-collection").text == "shapes"
    browser.find_element(By.ID, "discover-k").send_keys("10")
    browser.find_element(By.ID, "discover-run").click()
    # Starting a job is a write: the page asks for the write key once.
    prompt = wait.until(ec.alert_is_present())
    prompt.send_keys("write")
    prompt.accept()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#clusters .cluster")) == 10)
    summary = browser.find_element(By.ID, "discover-summary").text
    assert summary.startswith("k = 10 (given) · neighbour graph (")  # the default method
    assert "neighbours) · 120 images · 120 labelled · purity" in summary
    rows = browser.find_elements(By.CSS_SELECTOR, "#clusters .cluster")
    sizes = [int(r.find_element(By.CSS_SELECTOR, ".size").text.split()[0]) for r in rows]
    assert sum(sizes) == 120 and sizes == sorted(sizes, reverse=True)
    thumbs = rows[0].find_elements(By.CSS_SELECTOR, ".thumbs img")
    assert 1 <= len(thumbs) <= 12
    wait.until(lambda d: all(_image_loaded(d, t) for t in thumbs))
    _screenshot(browser, tmp_path, "discover.png")

    name = rows[0].find_element(By.CSS_SELECTOR, ".name input")
    name.send_keys("giraffe")
    rows[0].find_element(By.CSS_SELECTOR, ".name button").click()
    wait.until(lambda d: f"“giraffe”: {sizes[0]} labelled" in rows[0].text)
    assert "saved" in rows[0].get_attribute("class")
    req = urllib.request.Request(base + "/collections/shapes", headers={"X-API-Key": "read"})
    with urllib.request.urlopen(req) as r:
        assert json.loads(r.read())["labels"]["giraffe"] == sizes[0]
    assert not browser.find_element(By.ID, "error").is_displayed()
    _screenshot(browser, tmp_path, "discover-named.png")

    browser.find_element(By.ID, "discover-tab").click()  # back to the classifier
    assert browser.find_element(By.TAG_NAME, "main").is_displayed()
    # The 401s that made the page ask for the keys are logged by the browser: those only.
    severe = [
        e
        for e in browser.get_log("browser")
        if e["level"] == "SEVERE"
        and not (e["source"] == "network" and "status of 401" in e["message"])
    ]
    assert not severe, severe
