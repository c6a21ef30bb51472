"""The web page (static/) in a real headless browser against the real server.

Chromium and its WebDriver come from Debian (`chromium`, `chromium-driver`; .ci/setup-system
installs them), driven by Selenium with the driver path given explicitly, so Selenium Manager never
tries to download anything. The server runs as a subprocess on a free port with the tiny
random-weight phi-2 fixture and `--token-delay-ms`, so that an answer takes long enough to watch it
grow and to stop it. Without the browser, the driver or Selenium these tests skip, except under
CI=true, where that fails.
"""
import contextlib
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


# the latest answer's rendered element (its Markdown as HTML), or null before the first one
LAST_ANSWER = ("(() => { const a = document.querySelectorAll('#conversation .turn .answer .content');"
               " return a.length ? a[a.length - 1] : null; })()")


def _status(driver) -> str:
    return _js(driver, "document.getElementById('status').textContent")


def _answer_text(driver) -> str:
    """What the latest answer shows (its rendered text)."""
    return _js(driver, f"(({LAST_ANSWER}) || {{textContent: ''}}).textContent")


def _answer_len(driver) -> int:
    return len(_answer_text(driver))


def _raw_len(driver) -> int:
    """Length of the latest answer's Markdown source as streamed so far (grows monotonically,
    unlike the rendered text, which may shrink when a `**` closes)."""
    return _js(driver, "window.llmstream.answerText().length")


def _turns(driver) -> int:
    return _js(driver, "document.querySelectorAll('#conversation .turn').length")


def _disabled(driver, element_id: str) -> bool:
    return _js(driver, "document.getElementById(arguments[0]).disabled", element_id)


def _idle(driver) -> bool:
    """No answer in progress: Send enabled, Stop disabled, no answer marked as generating."""
    return (not _disabled(driver, "send") and _disabled(driver, "stop")
            and _js(driver, "document.querySelector('.answer.generating') === null"))


def _set_field(driver, element_id: str, value: str) -> None:
    """Type into a field as a person would (select all, type over)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    field = driver.find_element(By.ID, element_id)
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    if value:
        field.send_keys(value)


def _open_settings(driver) -> None:
    from selenium.webdriver.common.by import By
    if _js(driver, "document.getElementById('settings').hidden"):
        driver.find_element(By.ID, "settings-toggle").click()
    assert _js(driver, "document.getElementById('settings-toggle').getAttribute('aria-expanded')") == "true"


@pytest.fixture
def page(browser, server):
    """The page freshly loaded and ready (the model is loaded, Send enabled); its remembered
    settings are cleared afterwards."""
    browser.get(server + "/")
    _wait(browser, lambda: not _disabled(browser, "send"), 10, "the page never became ready")
    yield browser
    try:
        browser.execute_script("localStorage.clear()")
    except Exception:
        pass


# Installed before the page's own scripts: every chat request's JSON body is recorded in
# window.__sent, its headers in window.__headers; while window.__reply is null the request goes to the real server, otherwise it is
# answered here: {pieces: [...], delay: ms} streams those pieces as the server's SSE would (and
# honours Stop), {reject: "message"} fails as fetch does when nothing listens, {status, json} is an
# HTTP error.
STUB = r"""
(() => {
    const realFetch = window.fetch.bind(window);
    window.__sent = [];
    window.__headers = [];
    window.__reply = null;
    window.fetch = (url, opts) => {
        if (!/chat\/completions$/.test(String(url))) return realFetch(url, opts);
        try { window.__sent.push(JSON.parse(opts.body)); } catch (e) { window.__sent.push(null); }
        window.__headers.push(opts.headers || {});
        const r = window.__reply;
        if (!r) return realFetch(url, opts);
        if (r.reject) return Promise.reject(new TypeError(r.reject));
        if (r.status) {
            return Promise.resolve(new Response(JSON.stringify(r.json), {
                status: r.status, headers: {"Content-Type": "application/json"}}));
        }
        const ev = (o) => "data: " + JSON.stringify(o) + "\n\n";
        const chunks = [ev({choices: [{index: 0, delta: {role: "assistant", content: ""}}]})];
        for (const p of r.pieces) chunks.push(ev({choices: [{index: 0, delta: {content: p}}]}));
        chunks.push(ev({choices: [{index: 0, delta: {}, finish_reason: "stop"}]}));
        chunks.push(ev({choices: [], usage: {prompt_tokens: 12, completion_tokens: r.pieces.length,
                                            total_tokens: 12 + r.pieces.length},
                        timings: {prompt_tok_s: 100.0, gen_tok_s: 42.5}}));
        chunks.push("data: [DONE]\n\n");
        const enc = new TextEncoder();
        const signal = opts && opts.signal;
        const body = new ReadableStream({
            start(c) {
                if (signal) signal.addEventListener("abort", () => {
                    try { c.error(new DOMException("aborted", "AbortError")); } catch (e) {}
                });
            },
            async pull(c) {
                await new Promise((res) => setTimeout(res, r.delay === undefined ? 5 : r.delay));
                if (signal && signal.aborted) return;
                if (!chunks.length) { c.close(); return; }
                c.enqueue(enc.encode(chunks.shift()));
            },
        });
        return Promise.resolve(new Response(body, {
            status: 200, headers: {"Content-Type": "text/event-stream"}}));
    };
})();
"""


@contextlib.contextmanager
def _init_script(browser, source: str):
    script = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": source})
    try:
        yield
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument",
                                {"identifier": script["identifier"]})


@pytest.fixture
def stubbed(browser, server):
    """The page loaded with STUB in place, ready."""
    with _init_script(browser, STUB):
        browser.get(server + "/")
        _wait(browser, lambda: not _disabled(browser, "send"), 10, "the page never became ready")
        try:
            yield browser
        finally:
            browser.execute_script("localStorage.clear()")


def _reply(driver, pieces=None, delay: int = 5, **other) -> None:
    """How the stub answers the next chat requests."""
    reply = dict(other) if other else {"pieces": list(pieces), "delay": delay}
    driver.execute_script("window.__reply = arguments[0]", reply)


def _ask(driver, text: str) -> None:
    """Type a message and press Enter."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    prompt = driver.find_element(By.ID, "prompt")
    prompt.send_keys(text)
    prompt.send_keys(Keys.ENTER)


def _sent(driver) -> list:
    return _js(driver, "window.__sent")


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
    assert _status(page) == f"ready · context window {health['n_ctx']} tokens"
    # the vendored Markdown renderer and sanitizer loaded (static/vendor/)
    assert _js(page, "window.llmstream.markdownEnabled") is True
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
    samples = [(_raw_len(page), _status(page))]
    for _ in range(3):
        time.sleep(0.15)
        _wait(page, lambda: _raw_len(page) > samples[-1][0], 5,
              f"the answer stopped growing while generating: {samples}")
        samples.append((_raw_len(page), _status(page)))
        assert _disabled(page, "send") and not _disabled(page, "stop")
    assert all("generating" in s for _, s in samples), samples
    lengths = [n for n, _ in samples]

    # Stop: the answer so far stays and stops growing; the server stops generating
    page.find_element(By.ID, "stop").click()
    _wait(page, lambda: _status(page) == "stopped", 5, "the status never said stopped")
    stopped_at = _raw_len(page)
    shown = _answer_text(page)
    assert stopped_at >= lengths[-1] and shown
    _wait(page, lambda: _get_json(server + "/health")[1]["generating"] is False, 5,
          "the server went on generating after Stop")
    time.sleep(0.4)                           # > 10 tokens' worth of delay
    assert _raw_len(page) == stopped_at and _answer_text(page) == shown
    assert _status(page) == "stopped"
    assert _idle(page)
    stats = _js(page, "document.querySelector('.turn:last-of-type .stats').textContent")
    assert "stopped" in stats and "first token" in stats, stats

    # a new message (sent with Ctrl+Enter) runs to the end and reports its speed, in the status
    # line and under the answer
    prompt.send_keys("Name three colours.")
    prompt.send_keys(Keys.CONTROL, Keys.ENTER)
    _wait(page, lambda: "tok/s" in _status(page), 20, "the second answer never completed")
    status = _status(page)
    m = re.match(r"(\d+) tokens? · (\d+(?:\.\d+)?) tok/s", status)
    assert m, status
    assert int(m.group(1)) > 0 and float(m.group(2)) > 0
    assert _answer_len(page) > 0 and _turns(page) == 2
    stats = _js(page, "document.querySelector('.turn:last-of-type .stats').textContent")
    m = re.match(r"(\d+) tokens? · (\d+(?:\.\d+)?) tok/s · first token (\d+\.\d+) s · "
                 r"(\d+\.\d+) s in all", stats)
    assert m, stats
    assert 0 < float(m.group(3)) <= float(m.group(4))
    _wait(page, lambda: _idle(page), 5, "the page never became idle")


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
    assert _idle(page)
    # nothing was answered: no turn stays, the message is back in the box to send again
    assert _turns(page) == 0
    assert page.find_element(By.ID, "prompt").get_attribute("value") == "hello"


def test_a_three_turn_conversation_sends_the_earlier_turns(browser, server):
    """Each turn sends the whole conversation so far (the context type beside it, as the system
    prompt); New chat starts over."""
    from selenium.webdriver.common.by import By
    with _init_script(browser, STUB):                   # records the requests, answers go through
        browser.get(server + "/")
        _wait(browser, lambda: not _disabled(browser, "send"), 10, "never became ready")
        try:
            _open_settings(browser)
            _set_field(browser, "max-tokens", "12")      # short answers: the test stays quick
            questions = ["Pick a number.", "Add one to it.", "Now double that."]
            answers = []
            for i, q in enumerate(questions):
                _ask(browser, q)
                _wait(browser, lambda: _turns(browser) == i + 1 and _idle(browser), 20,
                      f"answer {i + 1} never completed")
                assert "tok/s" in _status(browser), _status(browser)
                answers.append(_js(browser, "window.llmstream.answerText()"))
                assert answers[-1] and _answer_len(browser) > 0
            sent = _sent(browser)
            assert len(sent) == 3
            expected = []
            for i, q in enumerate(questions):
                expected.append({"role": "user", "content": q})
                assert sent[i]["messages"] == expected, sent[i]
                assert sent[i]["context_type"] == "general"
                assert sent[i]["max_tokens"] == 12 and sent[i]["stream"] is True
                expected.append({"role": "assistant", "content": answers[i]})
            assert _js(browser, "window.llmstream.history()") == expected
            # the page shows the three turns in order, the questions as typed
            users = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".turn .user")]
            assert users == questions

            # New chat: the conversation is gone, the next message goes alone
            browser.find_element(By.ID, "new-chat").click()
            assert _turns(browser) == 0
            assert _js(browser, "document.activeElement.id") == "prompt"
            _ask(browser, "Hello again.")
            _wait(browser, lambda: _turns(browser) == 1 and _idle(browser), 20,
                  "the new chat's answer never completed")
            assert _sent(browser)[3]["messages"] == [{"role": "user", "content": "Hello again."}]
        finally:
            browser.execute_script("localStorage.clear()")


MARKDOWN_ANSWER = (
    "# Plan\n\nSome **bold**, some *emphasis* and `inline code`.\n\n"
    "```python\ndef add(a, b):\n    return a + b\n```\n\n"
    "- first\n- second\n\n"
    "| a | b |\n|---|---|\n| 1 | 2 |\n\n"
    "See [the docs](https://example.org/docs)."
)


def _pieces(text: str, size: int = 7) -> list:
    """The text in small pieces, cut anywhere (mid-word, mid-fence), as a model streams it."""
    return [text[i:i + size] for i in range(0, len(text), size)]


def test_markdown_and_code_blocks_are_rendered(stubbed):
    from selenium.webdriver.common.by import By
    page = stubbed
    _reply(page, _pieces(MARKDOWN_ANSWER), delay=15)
    _ask(page, "Give me a plan")
    # re-rendered while it streams, not only at the end
    _wait(page, lambda: _js(page, f"({LAST_ANSWER}) && ({LAST_ANSWER}).querySelector('h1') !== null"),
          10, "the heading was never rendered")
    assert _js(page, "document.querySelector('.answer.generating') !== null"), \
        "the answer finished before it was seen rendered while streaming"
    _wait(page, lambda: _idle(page), 10, "the answer never completed")
    answer = page.find_element(By.CSS_SELECTOR, ".turn:last-of-type .answer .content")
    q = lambda css: [e.text for e in answer.find_elements(By.CSS_SELECTOR, css)]
    assert q("h1") == ["Plan"]
    assert q("strong") == ["bold"] and q("em") == ["emphasis"]
    assert q("p > code") == ["inline code"]
    code = answer.find_element(By.CSS_SELECTOR, "pre > code")
    assert "language-python" in code.get_attribute("class")
    assert code.get_attribute("textContent") == "def add(a, b):\n    return a + b\n"
    assert q("ul > li") == ["first", "second"]
    assert q("table td") == ["1", "2"]
    link = answer.find_element(By.CSS_SELECTOR, "a")
    assert link.get_attribute("href") == "https://example.org/docs"
    assert link.get_attribute("rel") == "noopener noreferrer" and link.get_attribute("target") == "_blank"
    assert _js(page, "window.llmstream.answerText()") == MARKDOWN_ANSWER
    stats = _js(page, "document.querySelector('.turn:last-of-type .stats').textContent")
    assert stats.startswith(f"{len(_pieces(MARKDOWN_ANSWER))} tokens · 42.5 tok/s · first token "), stats


def test_html_in_an_answer_is_shown_as_text_never_run(stubbed):
    from selenium.webdriver.common.by import By
    page = stubbed
    answer = ('Look: <script>window.__injected = 1</script> and '
              '<img src="x" onerror="window.__injected = 2"> then\n\n'
              '<div onclick="window.__injected = 3">block html</div>\n\n'
              '[click me](javascript:window.__injected=4) and ![pic](x" onerror="window.__injected=5)\n\n'
              '<iframe srcdoc="<script>parent.__injected = 6</script>"></iframe>')
    _reply(page, _pieces(answer, 5))
    _ask(page, "<b>bold?</b> <img src=y onerror=window.__injected=7>")
    _wait(page, lambda: _idle(page) and _turns(page) == 1, 10, "the answer never completed")
    time.sleep(0.2)
    assert _js(page, "window.__injected === undefined")
    conv = page.find_element(By.ID, "conversation")
    for tag in ("script", "img", "iframe", "b", "div[onclick]", "[onerror]", "[onclick]"):
        assert conv.find_elements(By.CSS_SELECTOR, tag) == [], tag
    assert _js(page, "document.querySelectorAll('#conversation a[href^=\"javascript\"]').length") == 0
    shown = _answer_text(page)
    # the tags are there to read, as text
    assert "<script>window.__injected = 1</script>" in shown
    assert '<img src="x" onerror="window.__injected = 2">' in shown
    assert '<div onclick="window.__injected = 3">block html</div>' in shown
    # the user's own message is text too
    user = page.find_element(By.CSS_SELECTOR, ".turn .user").text
    assert user == "<b>bold?</b> <img src=y onerror=window.__injected=7>"
    # clicking what is left of the javascript: link runs nothing
    for link in conv.find_elements(By.CSS_SELECTOR, ".answer a"):
        link.click()
    time.sleep(0.1)
    assert _js(page, "window.__injected === undefined")
    assert len(page.window_handles) == 1


def test_copy_an_answer_and_a_code_block(stubbed):
    from selenium.webdriver.common.by import By
    page = stubbed
    page.execute_script("""
        window.__copied = [];
        Object.defineProperty(navigator, 'clipboard', {configurable: true, value: {
            writeText: (t) => { window.__copied.push(t); return Promise.resolve(); }}});
    """)
    first = "The first answer, with `code`.\n\n```sh\nls -l\n```\n"
    _reply(page, _pieces(first))
    _ask(page, "one")
    _wait(page, lambda: _idle(page) and _turns(page) == 1, 10, "the first answer never completed")
    _reply(page, _pieces("The second answer."))
    _ask(page, "two")
    _wait(page, lambda: _idle(page) and _turns(page) == 2, 10, "the second answer never completed")

    button = page.find_element(By.CSS_SELECTOR, ".turn:first-of-type .meta .copy")
    assert button.is_displayed() and button.get_attribute("aria-label") == "Copy answer 1"
    button.click()
    _wait(page, lambda: _js(page, "window.__copied.length") == 1, 5, "nothing was copied")
    assert _js(page, "window.__copied[0]") == first        # the Markdown source of that answer
    _wait(page, lambda: button.text == "Copied", 5, "the button never said Copied")

    page.find_element(By.CSS_SELECTOR, ".turn:first-of-type .code-copy").click()
    _wait(page, lambda: _js(page, "window.__copied.length") == 2, 5, "the code was not copied")
    assert _js(page, "window.__copied[1]") == "ls -l\n"


def test_settings_are_sent_and_remembered_across_a_reload(stubbed, server):
    from selenium.webdriver.common.by import By
    page = stubbed
    assert _js(page, "document.getElementById('settings').hidden")
    _open_settings(page)
    _set_field(page, "temperature", "0.7")
    _set_field(page, "max-tokens", "33")
    _set_field(page, "seed", "42")
    page.refresh()
    _wait(page, lambda: not _disabled(page, "send"), 10, "never became ready after the reload")
    values = {f: page.find_element(By.ID, f).get_attribute("value")
              for f in ("temperature", "max-tokens", "seed")}
    assert values == {"temperature": "0.7", "max-tokens": "33", "seed": "42"}

    _reply(page, ["ok"])
    _ask(page, "hi")
    _wait(page, lambda: _idle(page) and _turns(page) == 1, 10, "the answer never completed")
    body = _sent(page)[0]
    assert (body["temperature"], body["max_tokens"], body["seed"]) == (0.7, 33, 42)

    # a value out of range: nothing is sent, the status names the field and it is marked
    _open_settings(page)
    _set_field(page, "temperature", "5")
    _ask(page, "again")
    _wait(page, lambda: "temperature" in _status(page), 5, "the bad setting was not reported")
    assert "error" in page.find_element(By.ID, "status").get_attribute("class")
    assert _js(page, "document.getElementById('temperature').getAttribute('aria-invalid')") == "true"
    assert len(_sent(page)) == 1 and _turns(page) == 1

    # Reset: every field empty (the server's defaults), and so after a reload
    page.find_element(By.ID, "settings-reset").click()
    page.refresh()
    _wait(page, lambda: not _disabled(page, "send"), 10, "never became ready after the reload")
    assert [page.find_element(By.ID, f).get_attribute("value")
            for f in ("temperature", "max-tokens", "seed")] == ["", "", ""]
    _reply(page, ["ok"])
    _ask(page, "defaults")
    _wait(page, lambda: _idle(page) and _turns(page) == 1, 10, "the answer never completed")
    body = _sent(page)[0]
    assert not {"temperature", "max_tokens", "seed"} & set(body), body


def test_an_unreachable_server_says_so(stubbed):
    from selenium.webdriver.common.by import By
    page = stubbed
    _reply(page, reject="Failed to fetch")
    _ask(page, "Are you there?")
    _wait(page, lambda: "not reachable" in _status(page), 10, "never said the server is not reachable")
    status = _status(page)
    assert "Failed to fetch" not in status
    assert "error" in page.find_element(By.ID, "status").get_attribute("class")
    assert _idle(page) and _turns(page) == 0
    assert page.find_element(By.ID, "prompt").get_attribute("value") == "Are you there?"
    time.sleep(0.3)                    # the page's own health check finds the server: no "ready"
    assert _status(page) == status


def test_a_server_that_needs_an_api_key(stubbed):
    """A server started with --api-key answers the page's chat requests with 401 until the key is
    entered in Settings; then it is sent as a Bearer token."""
    from selenium.webdriver.common.by import By
    page = stubbed
    _reply(page, status=401, json={"error": {
        "message": "this server needs an API key: send the header 'Authorization: Bearer <key>'",
        "type": "authentication_error", "code": "invalid_api_key"}})
    _ask(page, "hi")
    _wait(page, lambda: "API key" in _status(page), 10, "the 401 was not explained")
    assert "Settings" in _status(page) and "Authorization" not in _status(page)
    assert not _js(page, "document.getElementById('settings').hidden")     # opened for it
    assert _turns(page) == 0 and "Authorization" not in _js(page, "window.__headers[0]")
    _set_field(page, "api-key", "sekrit")
    _reply(page, ["ok"])
    page.find_element(By.ID, "send").click()
    _wait(page, lambda: _idle(page) and _turns(page) == 1, 10, "the answer never completed")
    assert _js(page, "window.__headers[1]")["Authorization"] == "Bearer sekrit"


def test_an_over_long_prompt_says_what_to_do(page, server):
    """Real 400s with code context_length_exceeded: the page names the controls it has."""
    from selenium.webdriver.common.by import By
    _, health = _get_json(server + "/health")
    n_ctx = health["n_ctx"]

    # max tokens as large as the whole context window: no room for the message
    _open_settings(page)
    _set_field(page, "max-tokens", str(n_ctx))
    _ask(page, "Tell me a story.")
    _wait(page, lambda: "Too long" in _status(page), 10, "the over-long request was not reported")
    status = _status(page)
    assert f"max tokens ({n_ctx})" in status and "Lower max tokens in Settings" in status, status
    assert "New chat" in status and f"{n_ctx} tokens" in status, status
    assert "allow truncation" not in status                  # no such control on the page
    assert "error" in page.find_element(By.ID, "status").get_attribute("class")
    assert _idle(page) and _turns(page) == 0
    assert page.find_element(By.ID, "prompt").get_attribute("value") == "Tell me a story."

    # the server's default max tokens, but a message longer than the context window by itself
    _set_field(page, "max-tokens", "")
    page.execute_script("document.getElementById('prompt').value = arguments[0]",
                        "hello " * (n_ctx + 50))
    page.find_element(By.ID, "send").click()
    _wait(page, lambda: "Shorten your message" in _status(page), 10,
          "the over-long message was not reported")
    assert "does not fit" in _status(page) and "max tokens" not in _status(page)
    assert _turns(page) == 0


def test_keyboard_alone(stubbed):
    """Enter sends, Shift+Enter makes a new line, Tab walks the controls in order, Esc stops;
    every control has a name."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    page = stubbed
    assert _js(page, "document.activeElement.id") == "prompt"          # autofocus
    _reply(page, _pieces("An answer."))
    chain = ActionChains(page)
    chain.send_keys("line one").key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT)
    chain.send_keys("line two").perform()
    assert _js(page, "document.getElementById('prompt').value") == "line one\nline two"
    assert _turns(page) == 0 and _sent(page) == []
    ActionChains(page).send_keys(Keys.ENTER).perform()
    _wait(page, lambda: _idle(page) and _turns(page) == 1, 10, "Enter did not send")
    assert _sent(page)[0]["messages"][-1] == {"role": "user", "content": "line one\nline two"}
    assert _js(page, "document.getElementById('prompt').value") == ""
    assert _js(page, "document.activeElement.id") == "prompt"

    # Tab from the message box: context, Send (Stop is disabled, so skipped)
    order = []
    for _ in range(2):
        ActionChains(page).send_keys(Keys.TAB).perform()
        order.append(_js(page, "document.activeElement.id"))
    assert order == ["context-type", "send"]
    # Shift+Tab from the message box goes back up: the last answer's Copy button
    page.execute_script("document.getElementById('prompt').focus()")
    ActionChains(page).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
    assert _js(page, "document.activeElement.getAttribute('aria-label')") == "Copy answer 1"

    # Esc stops an answer in progress
    page.execute_script("document.getElementById('prompt').focus()")
    _reply(page, _pieces("slow " * 200, 5), delay=40)
    ActionChains(page).send_keys("a long one").send_keys(Keys.ENTER).perform()
    _wait(page, lambda: _raw_len(page) > 0, 10, "the slow answer never started")
    ActionChains(page).send_keys(Keys.ESCAPE).perform()
    _wait(page, lambda: _status(page) == "stopped", 5, "Esc did not stop the answer")
    assert _idle(page)

    # every control the keyboard can reach has an accessible name
    unnamed = _js(page, """[...document.querySelectorAll('button, select, textarea, input, a[href]')]
        .filter((e) => !((e.labels && e.labels.length) || e.getAttribute('aria-label')
                         || e.textContent.trim()))
        .map((e) => e.outerHTML)""")
    assert unnamed == []


PHONE_ANSWER = (
    "A long line of code:\n\n```js\nconst x = [" + ", ".join(str(i) for i in range(60)) + "];\n```\n\n"
    "A long URL: https://example.org/" + "a" * 120 + "\n\n"
    "A long word: " + "supercalifragilistic" * 6 + "\n\n"
    "| column one | column two | column three | column four | column five | column six |\n"
    "|---|---|---|---|---|---|\n| 1 | 2 | 3 | 4 | 5 | 6 |\n"
)


def test_a_390_px_wide_phone_screen(stubbed, server):
    from selenium.webdriver.common.by import By
    page = stubbed
    page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                         {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
    try:
        page.refresh()
        _wait(page, lambda: not _disabled(page, "send"), 10, "never became ready on the phone")
        assert _js(page, "window.innerWidth") == 390
        _reply(page, _pieces(PHONE_ANSWER, 20))
        _ask(page, "A message with a long word: " + "x" * 80)
        _wait(page, lambda: _idle(page) and _turns(page) == 1, 10, "the answer never completed")
        _open_settings(page)
        overflow = _js(page, """(() => {
            const width = document.documentElement.clientWidth;
            const out = [];
            if (document.documentElement.scrollWidth > width) out.push('page ' + document.documentElement.scrollWidth);
            for (const e of document.querySelectorAll('body *')) {
                if (e.closest('pre, table, .visually-hidden, .offscreen')) continue;  // those scroll inside
                const r = e.getBoundingClientRect();
                if (r.width && (r.right > width + 0.5 || r.left < -0.5)) out.push(e.tagName + '.' + e.className + ' ' + r.left + '-' + r.right);
            }
            return out;
        })()""")
        assert overflow == [], overflow
        # the code block and the table scroll sideways inside the answer
        assert _js(page, "document.querySelector('.answer pre').scrollWidth > "
                         "document.querySelector('.answer pre').clientWidth")
        for id_ in ("prompt", "send", "stop", "context-type", "new-chat", "settings-toggle"):
            assert page.find_element(By.ID, id_).is_displayed(), id_
    finally:
        page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_loading_model_then_ready(browser, server):
    """While /health answers 503 "loading" the page says so and polls until the model is ready."""
    from selenium.webdriver.common.by import By
    # the page's first health check gets the server's "loading" answer, the next ones the real one
    script = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": """
        (() => {
            const realFetch = window.fetch.bind(window);
            let healthCalls = 0;
            const answers = ['{"status": "loading"}',
                             '{"status": "loading", "loading": {"done": 524288000, "total": 1048576000}}',
                             '{"status": "warming"}'];
            window.fetch = (url, opts) => {
                if (/health$/.test(String(url)) && healthCalls < answers.length) {
                    return Promise.resolve(new Response(answers[healthCalls++], {
                        status: 503, headers: {"Content-Type": "application/json"}}));
                }
                return realFetch(url, opts);
            };
        })();
    """})
    try:
        browser.get(server + "/")
        seen = set()

        def watch(text):
            seen.add(_status(browser))
            return text in seen
        _wait(browser, lambda: watch("loading model…"), 5, "never said loading model…")
        assert _disabled(browser, "send")
        _wait(browser, lambda: watch("loading model… 50 % (500 of 1000 MB)"), 5,
              f"never showed the loading progress: {seen}")
        _wait(browser, lambda: watch("loading model… preparing the context prompts"), 5,
              f"never showed the warming state: {seen}")
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
        assert _answer_text(browser).strip() == "Half an ans"
        stats = _js(browser, "document.querySelector('.turn:last-of-type .stats').textContent")
        assert stats.endswith("interrupted"), stats
        # the part that came stays in the conversation: the next turn builds on it
        assert _js(browser, "window.llmstream.history()")[-1] == {"role": "assistant",
                                                                   "content": "Half an ans"}
        assert not _disabled(browser, "send")
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument",
                                {"identifier": script["identifier"]})
