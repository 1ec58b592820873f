"""The web chat page in a real headless browser (Debian's chromium, driven by Selenium)."""

import shutil

import httpx
import pytest

webdriver = pytest.importorskip("selenium.webdriver")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs chromium and chromium-driver "
                                "(scripts/ci-system-deps.sh installs them)")


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1100,800"):
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    drv.set_page_load_timeout(30)
    yield drv
    drv.quit()


def _answer(server, messages, seed):
    body = {"model": "tiny", "messages": messages, "temperature": 1.0, "top_p": 1, "max_tokens": 24, "seed": seed}
    return httpx.post(server.v1 + "/chat/completions", json=body, timeout=30).json()["choices"][0]["message"]["content"]


def test_chat_page_streams_an_answer(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    system, question = "You answer in one line.", "Where does Mina live?"
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    # A seed whose answer is long enough to arrive in several chunks (the model is random but fixed).
    seed = next(s for s in range(50) if len(_answer(server, msgs, s)) >= 8)
    expected = _answer(server, msgs, seed)

    html = httpx.get(server.url + "/").text
    assert "<script src" not in html and "<link" not in html and "http://" not in html and "https://" not in html
    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: "tiny" in d.find_element(By.ID, "model").text)

    def setting(id_, value):
        el = browser.find_element(By.ID, id_)
        el.clear()
        el.send_keys(value)

    setting("system", system)
    setting("temperature", "1")
    setting("top_p", "1")
    setting("max_tokens", "24")
    setting("seed", str(seed))
    browser.execute_script("""
        window.__updates = 0;
        new MutationObserver(() => window.__updates++).observe(document.getElementById('log'),
            {subtree: true, childList: true, characterData: true});""")
    box = browser.find_element(By.ID, "input")
    box.send_keys(question)
    box.send_keys(Keys.ENTER)
    done = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done='1']"))
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".msg.user")] == [question]
    assert done[0].text == expected.strip() or done[0].get_attribute("textContent") == expected
    assert browser.execute_script("return window.__updates") >= 3  # tokens arrived one chunk at a time
    assert "tokens in" in browser.find_element(By.ID, "stats").text

    # Regenerate replaces the answer (same seed: the same text); the conversation keeps one answer.
    browser.find_element(By.ID, "regen").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done='1']")
               and not d.find_elements(By.CSS_SELECTOR, ".msg.assistant.streaming"))
    answers = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")
    assert len(answers) == 1 and answers[0].get_attribute("textContent") == expected
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg.error")
