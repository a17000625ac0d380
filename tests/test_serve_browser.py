"""`jal serve`'s page in a real headless browser: two rounds labelled by clicks and keys, a restart, the same state.

It drives Debian's chromium with its chromedriver (`apt-get install chromium chromium-driver`),
never a browser downloaded for the test; without them it skips, unless JAL_REQUIRE_BROWSER=1,
as in CI, where it fails. With JAL_SERVE_SCREENSHOT=PATH it also labels three more rounds
and saves a screenshot of the page there (the README's docs/serve.png).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from jal.data import DataConfig, load_dataset, make_pool
from tests.test_serve import POOL, SMALL_FLAGS, api_client, images, start_server, stop_server  # noqa: F401

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), "/usr/bin/chromedriver"
TIMEOUT = 180  # seconds for a round: the first one compiles


def browser_or_skip():
    """A headless chromium driven through the system's chromedriver."""
    reason = None
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        reason = "selenium is not installed (pip install 'jal[test]')"
    if reason is None and (CHROMIUM is None or not Path(CHROMEDRIVER).exists()):
        reason = "no chromium and chromium-driver (apt-get install -y chromium chromium-driver)"
    if reason is not None:
        if os.environ.get("JAL_REQUIRE_BROWSER") == "1":
            pytest.fail(f"JAL_REQUIRE_BROWSER=1, but {reason}")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,880"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


class Page:
    """The labelling page, as a person sees and uses it."""

    def __init__(self, driver, pool_labels: np.ndarray):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.pool_labels = driver, pool_labels
        self.wait = lambda condition, timeout=TIMEOUT: WebDriverWait(driver, timeout, 0.1).until(condition)

    def open(self, url: str) -> None:
        self.driver.get(url)
        self.wait(lambda d: self.text("labelled") != "" and d.find_elements("css selector", "#classes button"))

    def text(self, element_id: str) -> str:
        return self.driver.find_element("id", element_id).text

    def number(self, element_id: str) -> int:
        return int(self.text(element_id))

    def current(self) -> int:
        """The pool index of the sample shown, once its image is there."""
        self.wait(lambda d: self.text("sample-title").startswith("Sample ")
                  and (d.find_element("id", "sample").get_attribute("src") or "").startswith("blob:"))  # fmt: skip
        return int(self.text("sample-title").split()[1])

    def label(self, by: str) -> None:
        """Gives the sample shown its true class, by clicking its button or pressing its key."""
        from selenium.webdriver.common.action_chains import ActionChains

        labelled, label = self.number("labelled"), int(self.pool_labels[self.current()])
        if by == "click":
            self.driver.find_element("css selector", f'#classes button[data-class="{label}"]').click()
        else:
            ActionChains(self.driver).send_keys(str(label)).perform()
        self.wait(lambda d: self.number("labelled") == labelled + 1)

    def label_round(self, ways: list[str]) -> None:
        """Labels the round's samples one way each; the next round then starts by itself and finishes."""
        points, round_ = len(self.points()), self.number("round")
        for way in ways:
            self.label(way)
        self.wait(lambda d: self.number("round") == round_ + 1 and len(self.points()) == points + 1)
        self.wait(lambda d: not self.driver.find_element("id", "sample").get_attribute("hidden"))

    def points(self) -> list:
        return self.driver.find_elements("css selector", "#curve circle.point")

    def errors(self) -> list[str]:
        return [entry["message"] for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]


def data(digits_8x8: Path, screenshot: bool) -> tuple[list[str], np.ndarray]:
    """The flags of the data and settings, and the true classes of the pool, which the test labels by.

    The screenshot shows MNIST (the clone's copy), and models trained long enough to learn.
    """
    if not screenshot:
        with np.load(digits_8x8) as arrays:
            return ["--data", str(digits_8x8), *SMALL_FLAGS], arrays["y_train"][make_pool(1400, POOL, seed=1)]
    mnist = Path(__file__).resolve().parent.parent / "data" / "mnist"
    labels = load_dataset(DataConfig(mnist_dir=str(mnist))).y_train[make_pool(60_000, 2000, seed=1)]
    settings = ["--pool-size", "2000", "--epochs", "3", "--min-samples-per-epoch", "1000", "--lr", "0.002"]
    return ["--data-dir", str(mnist), *SMALL_FLAGS, *settings, "--mc-samples", "16"], labels


@pytest.mark.slow
def test_labelling_two_rounds_in_the_browser_survives_a_restart(tmp_path, images):  # noqa: F811
    driver = browser_or_skip()
    screenshot = os.environ.get("JAL_SERVE_SCREENSHOT")
    flags, pool_labels = data(images, bool(screenshot))
    out, log = tmp_path / "project", tmp_path / "server.log"
    process, url = start_server(out, *flags, log=log)
    page = Page(driver, pool_labels)
    try:
        page.open(url)
        assert page.number("round") == 0 and page.number("labelled") == 0
        assert "5 of round 0's samples to label" in page.text("status")
        assert page.text("sample-score") == "picked at random"
        assert len(driver.find_elements("css selector", "#queue li")) == 5

        # Undo, by its button and by its key: the sample comes back to be labelled again.
        first = page.current()
        page.label("click")
        driver.find_element("id", "undo").click()
        page.wait(lambda d: page.number("labelled") == 0 and page.current() == first)
        page.label("key")
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(driver).send_keys("\ue003").perform()  # Backspace
        page.wait(lambda d: page.number("labelled") == 0 and page.current() == first)

        page.label_round(["click", "click", "key", "click", "key"])  # round 0: then round 1 trains
        assert page.number("labelled") == 5 and len(page.points()) == 1
        assert page.text("sample-score").startswith("score ")
        assert len(driver.find_elements("css selector", "#scores path.proposed")) == 5
        page.label_round(["key"] * 5)  # round 1: then round 2 trains
        assert page.number("labelled") == 10 and len(page.points()) == 2
        assert len(driver.find_elements("css selector", "#history li")) == 10
        assert page.text("history-total") == "(10)"
        assert page.errors() == []  # nothing refused by the page's policy, no script error
        driver.get("about:blank")  # the page polls: it would find the server gone
    finally:
        stop_server(process)

    process, url = start_server(out, *flags, log=log)
    try:
        page.open(url)
        page.wait(lambda d: len(page.points()) == 2)
        assert page.number("labelled") == 10 and page.number("round") == 2
        assert len(driver.find_elements("css selector", "#history li")) == 10
        assert "5 of round 2's samples to label" in page.text("status")
        history = api_client(url).get("/api/history").json()["labels"]
        assert all(e["label"] == pool_labels[e["index"]] for e in history)
        if screenshot:
            for _ in range(6):
                page.label_round(["key"] * 5)
            page.current()
            driver.set_window_size(1280, 1040)
            driver.save_screenshot(screenshot)
        assert page.errors() == []
    finally:
        stop_server(process)
        driver.quit()
    assert "Traceback" not in log.read_text()
