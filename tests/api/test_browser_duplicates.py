"""The page's Duplicates view in headless Chromium (fixtures of tests/api/test_browser.py)."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.api.test_browser import _image_loaded, _screenshot, browser, start_server  # noqa: F401


@pytest.fixture
def page_server(start_server):  # noqa: F811
    return start_server()


def test_duplicates_view_shows_groups_as_rows_of_thumbnails(page_server, browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with urllib.request.urlopen(page_server + "/static/duplicates.js") as r:
        assert r.headers["content-type"].startswith("text/javascript")
    with urllib.request.urlopen(
        page_server + "/collections/shapes/duplicates?threshold=0.999"
    ) as r:
        expected = json.loads(r.read())
    assert 2 <= expected["total_groups"] <= 10  # one page

    wait = WebDriverWait(browser, 30)
    browser.get(page_server + "/")
    browser.find_element(By.ID, "dup-threshold").send_keys("0.999")
    browser.find_element(By.ID, "dup-find").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".dup-group")) > 0)
    groups = browser.find_elements(By.CSS_SELECTOR, ".dup-group")
    assert len(groups) == expected["total_groups"]
    for shown, want in zip(groups, expected["groups"], strict=True):
        cards = shown.find_elements(By.CSS_SELECTOR, ".card")
        assert [c.get_attribute("data-id") for c in cards] == [m["id"] for m in want["members"]]
        assert f"{want['size']} images" in shown.find_element(By.CSS_SELECTOR, ".dup-head").text
    thumbs = browser.find_elements(By.CSS_SELECTOR, ".dup-group .card img")
    wait.until(lambda d: all(_image_loaded(d, t) for t in thumbs))
    summary = browser.find_element(By.ID, "dup-summary").text
    assert f"{expected['total_groups']} groups" in summary and "shapes" in summary
    assert not browser.find_elements(By.ID, "dup-more")
    _screenshot(browser, tmp_path, "duplicates.png")

    # A bad threshold: the API's message, no groups.
    field = browser.find_element(By.ID, "dup-threshold")
    field.clear()
    field.send_keys("2")
    browser.find_element(By.ID, "dup-find").click()
    wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "invalid_parameter" in browser.find_element(By.ID, "error").text
    assert not browser.find_elements(By.CSS_SELECTOR, ".dup-group")
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert all("duplicates?" in e["message"] and "422" in e["message"] for e in severe), severe
