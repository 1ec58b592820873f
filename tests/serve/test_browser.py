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


def test_compare_page_records_a_ranking_the_reward_recipe_reads(tiny_lm, tiny_ckpt, browser, tmp_path):
    """serve --compare tiny tiny --labels FILE: a person types a prompt, gets two sampled answers side by side,
    ranks them, saves; the ranking is a row of the file in lmstack's format, and a reward-model step trains on it."""
    import json

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from lmstack.train.reward import RewardConfig, run
    from tests.serve.conftest import server_thread

    labels = tmp_path / "labels.jsonl"
    labels.write_text("")
    question = "Where does Mina live?"
    with server_thread(tiny_lm, compare=("tiny", "tiny"), labels=str(labels)) as s:
        # A seed whose two samples (seed, seed + 1) are different and not empty (the model is random but fixed).
        def sample(seed):
            body = {"model": "tiny", "messages": [{"role": "user", "content": question}], "temperature": 1.0,
                    "max_tokens": 16, "seed": seed}
            return httpx.post(s.v1 + "/chat/completions", json=body).json()["choices"][0]["message"]["content"]

        seed = next(k for k in range(50) if sample(k).strip() and sample(k + 1).strip() and sample(k) != sample(k + 1))
        expected = sorted([sample(seed), sample(seed + 1)])
        html = httpx.get(s.url + "/compare").text
        assert "<script src" not in html and "http://" not in html and "https://" not in html
        browser.get(s.url + "/compare")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: "tiny, tiny" in d.find_element(By.ID, "info").text)
        browser.find_element(By.ID, "max_tokens").clear()
        browser.find_element(By.ID, "max_tokens").send_keys("16")
        browser.find_element(By.ID, "seed").send_keys(str(seed))
        browser.find_element(By.ID, "prompt").send_keys(question)
        browser.find_element(By.ID, "ask").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".answer select")) == 2
                   or "error" in d.find_element(By.ID, "status").get_attribute("class"))
        assert not browser.find_elements(By.CSS_SELECTOR, "#status.error"), browser.find_element(By.ID, "status").text
        shown = [e.get_attribute("textContent") for e in browser.find_elements(By.CSS_SELECTOR, ".answer pre")]
        browser.find_element(By.ID, "save").click()  # unranked: refused on the page, nothing written
        assert "different rank" in browser.find_element(By.ID, "status").text and labels.read_text() == ""
        Select(browser.find_element(By.ID, "rank-0")).select_by_value("2")
        Select(browser.find_element(By.ID, "rank-1")).select_by_value("1")
        browser.find_element(By.ID, "save").click()
        wait.until(lambda d: "saved" in d.find_element(By.ID, "status").text
                   or "error" in d.find_element(By.ID, "status").get_attribute("class"))
        assert "saved: 1 rankings" in browser.find_element(By.ID, "status").text, \
            browser.find_element(By.ID, "status").text
        bad = httpx.post(s.v1 + "/labels", json={"prompt": "x", "answers": ["a", "b"], "ranking": [0, 0]})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "ranking"
    rows = [json.loads(x) for x in labels.read_text().splitlines()]
    assert len(rows) == 1
    row = rows[0]
    assert row["prompt"] == [{"role": "user", "content": question}] and row["answers"] == shown
    assert sorted(shown) == expected  # the two samples, in the order the page shuffled them into
    assert row["ranking"] == [1, 0] and row["models"] == ["tiny", "tiny"] and row["source"] == "human"
    res = run(RewardConfig(model=str(tiny_ckpt), data=[str(labels)], val_data=[str(labels)],
                           out=str(tmp_path / "rm"), epochs=0, steps=1, micro_batch=1, seq_len=128, quiet=True))
    assert res.summary["data"]["pairs"] == 1
