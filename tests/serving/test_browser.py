"""End to end in a real browser: medtune's page in headless Chromium, a question typed, the answer streaming in."""

import os
import shutil
import tempfile

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="needs the Debian packages chromium and chromium-driver",
)


@pytest.fixture(scope="module")
def server(tiny_run, server_thread):
    from medtune.serving.app import create_app
    from medtune.serving.engine import EngineClient, Limits
    from medtune.serving.server import LOOPBACK

    engine = EngineClient(tiny_run(), Limits(max_tokens=64))
    with server_thread(create_app(engine=engine, allowed_hosts=LOOPBACK)) as srv:
        yield srv
    engine.close()


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="medtune-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1000,900",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def test_question_answer_streams_into_the_page(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from medtune.notice import NOTICE

    browser.get(server.url + "/")
    assert "medtune" in browser.title
    assert browser.find_element(By.ID, "notice").text.strip() == NOTICE
    box = browser.find_element(By.ID, "question")
    browser.find_element(By.CSS_SELECTOR, "details summary").click()  # open the settings
    max_tokens = browser.find_element(By.ID, "max-tokens")
    max_tokens.clear()
    max_tokens.send_keys("48")

    # a briefly trained tiny model sometimes ends an answer at once: ask up to 4 times for a multi-chunk answer
    for attempt in range(1, 5):
        box.clear()
        box.send_keys(f"What are the symptoms of asthma? ({attempt})")
        browser.find_element(By.ID, "ask").click()
        WebDriverWait(browser, 10).until(
            lambda d, attempt=attempt: len(d.find_elements(By.CSS_SELECTOR, ".answer")) == attempt
        )
        answer = browser.find_elements(By.CSS_SELECTOR, ".answer")[0]  # newest first
        WebDriverWait(browser, 60).until(
            lambda _, answer=answer: answer.get_attribute("data-state") in ("done", "error")
        )
        assert answer.get_attribute("data-state") == "done", answer.text
        assert answer.find_element(By.CSS_SELECTOR, ".answer-question").text.endswith(f"({attempt})")
        assert answer.find_element(By.CSS_SELECTOR, ".answer-notice").text == NOTICE  # every answer carries it
        assert "tokens" in answer.find_element(By.CSS_SELECTOR, ".answer-meta").text
        if int(answer.get_attribute("data-chunks")) >= 2:
            break
    else:
        pytest.fail("no answer arrived in more than one streamed chunk in 4 tries")
    text = answer.find_element(By.CSS_SELECTOR, ".answer-text").text
    assert text.strip()
    assert browser.find_element(By.ID, "ask").is_enabled()
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_error_from_the_api_is_shown_not_swallowed(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    box = browser.find_element(By.ID, "question")
    browser.execute_script("arguments[0].value = arguments[1]", box, "word " * 700)  # over the prompt limit
    browser.find_element(By.ID, "ask").click()
    WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, '.answer[data-state="error"]'))
    answer = browser.find_element(By.CSS_SELECTOR, ".answer")
    assert "at most 511" in answer.find_element(By.CSS_SELECTOR, ".answer-text").text
    assert answer.find_element(By.CSS_SELECTOR, ".answer-notice").text.startswith("Not medical advice")
    assert browser.find_element(By.ID, "ask").is_enabled()


@pytest.fixture(scope="module")
def keyed_server(tiny_run, server_thread):
    from medtune.serving.app import create_app
    from medtune.serving.engine import EngineClient, Limits
    from medtune.serving.server import LOOPBACK

    engine = EngineClient(tiny_run(), Limits(max_tokens=32))
    with server_thread(create_app(engine=engine, allowed_hosts=LOOPBACK, api_key="browser-key")) as srv:
        yield srv
    engine.close()


def test_page_works_with_an_api_key(keyed_server, browser):
    """Without the key the page is a bare 401; opening /?key=KEY once sets the cookie, and the page then answers."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.delete_all_cookies()
    browser.get(keyed_server.url + "/")
    assert "unauthorized" in browser.page_source and not browser.find_elements(By.ID, "question")
    browser.get(keyed_server.url + "/?key=browser-key")
    assert browser.current_url.rstrip("/") == keyed_server.url  # the key left the address bar
    box = browser.find_element(By.ID, "question")
    box.send_keys("What is asthma?")
    browser.find_element(By.ID, "ask").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".answer"))
    answer = browser.find_elements(By.CSS_SELECTOR, ".answer")[0]
    WebDriverWait(browser, 60).until(lambda _: answer.get_attribute("data-state") in ("done", "error"))
    assert answer.get_attribute("data-state") == "done", answer.text
