"""The web page (static/) in a real headless browser against the real server.

Chromium and its WebDriver come from Debian (`chromium`, `chromium-driver`; .ci/setup-system
installs them), driven by Selenium with the driver path given explicitly, so Selenium Manager never
tries to download anything. The server runs as a subprocess on a free port with the tiny
random-weight phi-2 fixture and `--token-delay-ms`, so that an answer takes long enough to watch it
grow and to stop it. Without the browser, the driver or Selenium these tests skip, except under
CI=true, where that fails.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import shared_path

ROOT = Path(__file__).resolve().parent.parent
TOKEN_DELAY_MS = 30
MAX_TOKENS = 80             # 80 x 30 ms: an answer lasts >= 2.4 s, long enough to watch and stop
IN_CI = os.environ.get("CI", "").lower() == "true"


def _unavailable(msg: str):
    """Skip, or fail under CI=true, where the tooling must be there."""
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def _find(names, fallbacks=()):
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    for path in fallbacks:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


# ------------------------------------------------------------------------------ the server

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str, timeout: float = 2.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.load(e)


def _stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    """Base URL of a running `llmstream serve` with the phi-2 fixture model."""
    model = shared_path("reference", "phi2-Q8_0.gguf")
    log_path = tmp_path_factory.mktemp("webui") / "server.log"

    for _attempt in range(3):            # another process may take the free port meanwhile
        port = _free_port()
        log = open(log_path, "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmstream.cli", "serve", "--model", str(model),
             "--host", "127.0.0.1", "--port", str(port), "--threads", "1",
             "--token-delay-ms", str(TOKEN_DELAY_MS), "--max-tokens", str(MAX_TOKENS)],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        request.addfinalizer(lambda proc=proc: _stop_process(proc))
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, _ = _get_json(base + "/health", timeout=1)
                if status == 200:
                    return base
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        _stop_process(proc)
        text = log_path.read_text(errors="replace")
        if "cannot listen" not in text:
            break
    pytest.fail(f"the server did not become ready; its log:\n{log_path.read_text(errors='replace')}")


# ------------------------------------------------------------------------------ the browser

@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed (pip install -e '.[test]')")
    chromium = _find(["chromium", "chromium-browser", "google-chrome"])
    driver_path = _find(["chromedriver"], ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"])
    if not chromium or not driver_path:
        _unavailable("headless Chromium tests need Debian's chromium and chromium-driver "
                     "(run .ci/setup-system, or apt-get install chromium chromium-driver)")

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-extensions", "--no-first-run", "--window-size=1000,800"):
        options.add_argument(arg)
    # an explicit driver path: Selenium Manager is never asked to find (download) one
    service = Service(executable_path=driver_path)
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(15)
        driver.set_script_timeout(10)
        yield driver
    finally:
        driver.quit()


def _js(driver, expr: str, *args):
    return driver.execute_script("return " + expr, *args)


def _wait(driver, cond, timeout: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.03).until(lambda d: cond(), message=what)


def _status(driver) -> str:
    return _js(driver, "document.getElementById('status').textContent")


def _answer_len(driver) -> int:
    return _js(driver, "document.getElementById('answer').textContent.length")


def _disabled(driver, element_id: str) -> bool:
    return _js(driver, "document.getElementById(arguments[0]).disabled", element_id)


@pytest.fixture
def page(browser, server):
    """The page freshly loaded and ready (the model is loaded, Send enabled)."""
    browser.get(server + "/")
    _wait(browser, lambda: not _disabled(browser, "send"), 10, "the page never became ready")
    return browser


# ------------------------------------------------------------------------------ tests

def test_page_shows_model_and_context_types(page, server):
    from selenium.webdriver.common.by import By
    _, health = _get_json(server + "/health")
    assert page.find_element(By.ID, "model").text == health["model"]
    select = page.find_element(By.ID, "context-type")
    options = [o.get_attribute("value") for o in select.find_elements(By.TAG_NAME, "option")]
    assert options == health["context_types"]
    assert select.get_attribute("value") == health["default_context_type"]
    assert not _disabled(page, "send") and _disabled(page, "stop")
    # only the page's own files were loaded: no CDN, no request that failed
    failed = [e for e in page.get_log("browser") if e.get("level") == "SEVERE"]
    assert not failed, failed


def test_streams_stops_and_sends_again(page, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    prompt = page.find_element(By.ID, "prompt")
    prompt.send_keys("What is the capital of France?")
    page.find_element(By.ID, "send").click()

    # the answer grows, moment after moment, while the status says it is generating (each
    # sample waits for growth instead of assuming a speed: a busy machine slows every token)
    _wait(page, lambda: _answer_len(page) > 0, 15, "no text arrived")
    samples = [(_answer_len(page), _status(page))]
    for _ in range(3):
        time.sleep(0.15)
        _wait(page, lambda: _answer_len(page) > samples[-1][0], 5,
              f"the answer stopped growing while generating: {samples}")
        samples.append((_answer_len(page), _status(page)))
        assert _disabled(page, "send") and not _disabled(page, "stop")
    assert all("generating" in s for _, s in samples), samples
    lengths = [n for n, _ in samples]

    # Stop: the answer so far stays and stops growing; the server stops generating
    page.find_element(By.ID, "stop").click()
    _wait(page, lambda: _status(page) == "stopped", 5, "the status never said stopped")
    stopped_at = _answer_len(page)
    assert stopped_at >= lengths[-1]
    _wait(page, lambda: _get_json(server + "/health")[1]["generating"] is False, 5,
          "the server went on generating after Stop")
    time.sleep(0.4)                           # > 10 tokens' worth of delay
    assert _answer_len(page) == stopped_at
    assert _status(page) == "stopped"
    assert not _disabled(page, "send") and _disabled(page, "stop")

    # a new question (sent with Ctrl+Enter) runs to the end and reports its speed
    prompt.clear()
    prompt.send_keys("Name three colours.")
    prompt.send_keys(Keys.CONTROL, Keys.ENTER)
    _wait(page, lambda: "tok/s" in _status(page), 20, "the second answer never completed")
    status = _status(page)
    m = re.match(r"(\d+) tokens? · (\d+(?:\.\d+)?) tok/s", status)
    assert m, status
    assert int(m.group(1)) > 0 and float(m.group(2)) > 0
    assert _answer_len(page) > 0
    assert not _disabled(page, "send") and _disabled(page, "stop")


def test_server_error_shows_in_status(page):
    from selenium.webdriver.common.by import By
    # a context type the server does not know: 400 with an OpenAI-style error body
    page.execute_script("""
        const sel = document.getElementById('context-type');
        const opt = document.createElement('option');
        opt.value = opt.textContent = 'no-such-context';
        sel.appendChild(opt);
        sel.value = 'no-such-context';
    """)
    page.find_element(By.ID, "prompt").send_keys("hello")
    page.find_element(By.ID, "send").click()
    _wait(page, lambda: "no-such-context" in _status(page), 10, "the error never showed")
    assert "error" in page.find_element(By.ID, "status").get_attribute("class")
    assert not _disabled(page, "send") and _disabled(page, "stop")


def test_model_output_is_inserted_as_text(page):
    from selenium.webdriver.common.by import By
    pieces = ["<b>bold</b> and ", "<script>window.__injected = 1</script>",
              '<img src="x" onerror="window.__injected = 2">']
    for piece in pieces:
        page.execute_script("window.llmstream.appendAnswer(arguments[0])", piece)
    answer = page.find_element(By.ID, "answer")
    assert answer.find_elements(By.CSS_SELECTOR, "*") == []
    assert _js(page, "document.querySelectorAll('#answer b, #answer script, #answer img').length") == 0
    assert _js(page, "document.getElementById('answer').textContent") == "".join(pieces)
    time.sleep(0.1)
    assert _js(page, "window.__injected === undefined")


def test_loading_model_then_ready(browser, server):
    """While /health answers 503 "loading" the page says so and polls until the model is ready."""
    from selenium.webdriver.common.by import By
    # the page's first health check gets the server's "loading" answer, the next ones the real one
    script = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": """
        (() => {
            const realFetch = window.fetch.bind(window);
            let healthCalls = 0;
            window.fetch = (url, opts) => {
                if (/health$/.test(String(url)) && healthCalls++ === 0) {
                    return Promise.resolve(new Response('{"status": "loading"}', {
                        status: 503, headers: {"Content-Type": "application/json"}}));
                }
                return realFetch(url, opts);
            };
        })();
    """})
    try:
        browser.get(server + "/")
        _wait(browser, lambda: _status(browser) == "loading model…", 5, "never said loading model…")
        assert _disabled(browser, "send")
        _wait(browser, lambda: not _disabled(browser, "send"), 10, "never became ready")
        _, health = _get_json(server + "/health")
        assert browser.find_element(By.ID, "model").text == health["model"]
        assert "loading" not in _status(browser)
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument",
                                {"identifier": script["identifier"]})


def _ask_in_background(server: str, n: int, max_tokens: int = MAX_TOKENS):
    """n /token_stream requests from threads (other users): returns the threads, already started."""
    import threading

    def ask(i):
        req = urllib.request.Request(server + "/token_stream", method="POST",
                                     data=json.dumps({"query": f"other user {i}",
                                                      "max_tokens": max_tokens}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()

    threads = [threading.Thread(target=ask, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def test_two_tabs_stream_at_the_same_time(page, server):
    from selenium.webdriver.common.by import By
    first = page.current_window_handle
    page.find_element(By.ID, "prompt").send_keys("First tab's question")
    page.find_element(By.ID, "send").click()
    _wait(page, lambda: _answer_len(page) > 0, 15, "the first tab got no text")
    page.switch_to.new_window("tab")
    second = page.current_window_handle
    try:
        page.get(server + "/")
        _wait(page, lambda: not _disabled(page, "send"), 10, "the second tab never became ready")
        page.find_element(By.ID, "prompt").send_keys("Second tab's question")
        page.find_element(By.ID, "send").click()
        _wait(page, lambda: _answer_len(page) > 0, 15, "the second tab got no text")
        # both generate at once on the server: two slots busy, nobody waiting
        _, health = _get_json(server + "/health")
        assert health["slots_busy"] == 2 and health["waiting"] == 0, health
        _wait(page, lambda: "tok/s" in _status(page), 30, "the second tab's answer never completed")
        page.switch_to.window(first)
        _wait(page, lambda: "tok/s" in _status(page), 30, "the first tab's answer never completed")
        assert _answer_len(page) > 0
    finally:
        page.switch_to.window(second)
        page.close()
        page.switch_to.window(first)


def test_a_queued_request_says_it_waits_then_streams(page, server):
    from selenium.webdriver.common.by import By
    _, health = _get_json(server + "/health")
    others = _ask_in_background(server, health["slots_total"])   # every slot taken
    _wait(page, lambda: _get_json(server + "/health")[1]["slots_busy"] == health["slots_total"],
          15, "the other users' requests never filled the slots")
    page.find_element(By.ID, "prompt").send_keys("Am I queued?")
    page.find_element(By.ID, "send").click()
    _wait(page, lambda: "waiting for a free slot" in _status(page), 10,
          "the page never said it was waiting for a slot")
    assert _answer_len(page) == 0 and not _disabled(page, "stop")
    _wait(page, lambda: _answer_len(page) > 0, 30, "the queued request never streamed")
    _wait(page, lambda: "tok/s" in _status(page), 30, "the queued answer never completed")
    for t in others:
        t.join(30)


def test_an_answer_cut_short_by_the_server_shows_interrupted(browser, server):
    """The server cancels an answer (shutdown): its SSE stream ends with finish_reason "cancelled"
    and an error event; the page keeps the text and says the answer was interrupted."""
    from selenium.webdriver.common.by import By
    script = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": r"""
        (() => {
            const realFetch = window.fetch.bind(window);
            window.fetch = (url, opts) => {
                if (!/chat\/completions$/.test(String(url))) return realFetch(url, opts);
                const ev = (o) => "data: " + JSON.stringify(o) + "\n\n";
                const body = ev({choices: [{index: 0, delta: {role: "assistant", content: ""}}]}) +
                    ev({choices: [{index: 0, delta: {content: "Half an ans"}}]}) +
                    ev({choices: [{index: 0, delta: {}, finish_reason: "cancelled"}]}) +
                    ev({error: {message: "the server stopped this answer (it is shutting down)",
                                type: "server_error"}}) + "data: [DONE]\n\n";
                return Promise.resolve(new Response(body, {
                    status: 200, headers: {"Content-Type": "text/event-stream"}}));
            };
        })();
    """})
    try:
        browser.get(server + "/")
        _wait(browser, lambda: not _disabled(browser, "send"), 10, "never became ready")
        browser.find_element(By.ID, "prompt").send_keys("hello")
        browser.find_element(By.ID, "send").click()
        _wait(browser, lambda: "interrupted" in _status(browser), 10, "never said interrupted")
        assert "shutting down" in _status(browser)
        assert _js(browser, "document.getElementById('answer').textContent") == "Half an ans"
        assert not _disabled(browser, "send")
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument",
                                {"identifier": script["identifier"]})
