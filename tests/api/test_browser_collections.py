"""The page's collection controls in headless Chromium (as tests/api/test_browser.py): add the
chosen image with a label, fix its label in place, delete it; the panel's counts follow."""

from __future__ import annotations

import os
import threading
import time

import pytest

from api.main import create_app
from tests.api.test_browser import _free_port, browser  # noqa: F401  (fixture)
from tests.api.test_collections import noise_png
from tests.servers import loopback_server


@pytest.fixture
def server(make_settings, tmp_path):
    port = _free_port()
    settings = make_settings(blob_dir=tmp_path / "blobs", max_batch_images=8)
    srv = loopback_server(create_app(settings), port)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def _shot(driver, tmp_path, name: str) -> None:
    folder = os.environ.get("DINOSERVE_SCREENSHOT_DIR", str(tmp_path))
    driver.save_screenshot(os.path.join(folder, f"collections-{name}.png"))


def test_add_relabel_and_delete_from_the_page(server, browser, tmp_path):  # noqa: F811
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    # The page re-renders the label and the cards after every write: an element found in one
    # poll can be gone when it is read, which is a reason to poll again, not a failure.
    wait = WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,))
    browser.get(server + "/")

    def panel(name: str = "shapes") -> str:
        # Read in one script call: the panel is re-rendered after every write.
        return browser.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
            f'#collections li[data-name="{name}"]',
        )

    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#collections li[data-name="shapes"]'))
    assert "120 images · 120 labelled" in panel()
    assert {
        e.get_attribute("data-name")
        for e in browser.find_elements(By.CSS_SELECTOR, "#collections li.coll")
    } == {"shapes", "nolabels", "stale"}

    image = tmp_path / "new.png"
    image.write_bytes(noise_png(42, 32))
    browser.find_element(By.ID, "file").send_keys(str(image))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#neighbors .card .edit"))
    browser.find_element(By.ID, "add-label").send_keys("zebra")
    browser.find_element(By.ID, "add-button").click()
    wait.until(lambda d: "Added to shapes" in d.find_element(By.ID, "add-status").text)
    wait.until(lambda d: "121 images · 121 labelled" in panel() and "zebra 1" in panel())

    def zebra_card():
        for c in browser.find_elements(By.CSS_SELECTOR, "#neighbors .card"):
            if c.find_element(By.CSS_SELECTOR, ".cap b").text == "zebra":
                return c
        return None

    card = wait.until(lambda d: zebra_card())  # classify found the image just added
    pid = card.get_attribute("data-id")
    _shot(browser, tmp_path, "added")

    field = card.find_element(By.CSS_SELECTOR, ".edit input")
    field.clear()
    field.send_keys("okapi", Keys.ENTER)
    wait.until(lambda d: "okapi 1" in panel() and "zebra" not in panel())
    # The vote is taken again: the relabelled image (similarity 1) now wins it.
    wait.until(lambda d: d.find_element(By.ID, "predicted-label").text == "okapi")

    def card_of(pid: str):
        found = browser.find_elements(By.CSS_SELECTOR, f'#neighbors .card[data-id="{pid}"]')
        return found[0] if found and found[0].find_elements(By.CSS_SELECTOR, ".edit") else None

    card = wait.until(lambda d: card_of(pid))
    assert card.find_element(By.CSS_SELECTOR, ".cap b").text == "okapi"
    _shot(browser, tmp_path, "relabelled")

    card.find_element(By.CSS_SELECTOR, ".edit button").click()
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, f'.card[data-id="{pid}"]'))
    wait.until(lambda d: "120 images · 120 labelled" in panel() and "okapi" not in panel())
    assert not browser.find_element(By.ID, "error").is_displayed()
    _shot(browser, tmp_path, "deleted")
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
