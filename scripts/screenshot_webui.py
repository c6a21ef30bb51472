"""Screenshots of the web page for the README: docs/screenshot-desktop.png and
docs/screenshot-phone.png (390 px wide), each after a real conversation streamed from a server.

    .venv/bin/python scripts/screenshot_webui.py                    # starts `llmstream demo`
    .venv/bin/python scripts/screenshot_webui.py --url http://127.0.0.1:3030/
    .venv/bin/python scripts/screenshot_webui.py --serve --model tests/fixture.gguf

Needs what tests/test_webui.py needs: selenium (the `test` extra) and Debian's chromium and
chromium-driver. Without --url it starts a server on a free port (`llmstream demo`, the small real
model, unless --serve gives other `llmstream serve` arguments), asks the questions below through
the page as a person would (typed, Enter) with temperature 0, and stops the server at the end.
"""
from __future__ import annotations

import argparse
import base64
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ["What is the capital of France?",
             "Write a Python function that returns the sum of a list of numbers."]
SETTINGS = {"temperature": "0", "max_tokens": "160"}
DESKTOP = (1000, 720, 1)        # width, height, device pixel ratio
PHONE = (390, 780, 1.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            sys.exit(f"the server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "health", timeout=2) as r:
                if json.load(r).get("status") == "ok":
                    return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"the server at {url} was not ready after {timeout:.0f} s")


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not chromium or not Path(driver).exists():
        sys.exit("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--hide-scrollbars", "--force-color-profile=srgb", "--window-size=1000,800"):
        options.add_argument(arg)
    d = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    d.set_page_load_timeout(30)
    return d


def converse(d, url: str, size: tuple, timeout: float) -> None:
    """Load the page at `size`, ask QUESTIONS (each to the end of its answer)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    width, height, scale = size
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": scale,
                       "mobile": width < 600})
    d.execute_cdp_cmd("Emulation.setEmulatedMedia",
                      {"features": [{"name": "prefers-color-scheme", "value": "light"}]})
    d.get(url)
    d.execute_script("localStorage.setItem('llmstream.settings', arguments[0])", json.dumps(SETTINGS))
    d.get(url)
    wait = WebDriverWait(d, timeout, poll_frequency=0.1)
    wait.until(lambda _: not d.find_element(By.ID, "send").get_attribute("disabled"))
    for i, q in enumerate(QUESTIONS, 1):
        prompt = d.find_element(By.ID, "prompt")
        prompt.send_keys(q)
        prompt.send_keys(Keys.ENTER)
        wait.until(lambda _: d.execute_script(
            "return document.querySelectorAll('.turn').length === arguments[0] && "
            "document.querySelector('.answer.generating') === null", i))
    d.execute_script("document.activeElement.blur(); window.scrollTo(0, document.body.scrollHeight)")
    time.sleep(0.3)


def shoot(d, path: Path) -> None:
    png = base64.b64decode(d.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})["data"])
    path.write_bytes(png)
    print(f"{path} ({len(png) // 1024} KB)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running llmstream server (else one is started)")
    ap.add_argument("--serve", nargs=argparse.REMAINDER,
                    help="start `llmstream serve` with these arguments instead of `llmstream demo`")
    ap.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for the PNGs (default docs/)")
    ap.add_argument("--timeout", type=float, default=120, help="seconds for the server and each answer")
    args = ap.parse_args(argv)

    proc = None
    url = args.url
    if url is None:
        port = free_port()
        cmd = ([sys.executable, "-m", "llmstream.cli", "serve", *args.serve] if args.serve is not None
               else [sys.executable, "-m", "llmstream.cli", "demo"])
        proc = subprocess.Popen(cmd + ["--host", "127.0.0.1", "--port", str(port)], cwd=ROOT,
                                stdin=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}/"
    url = url if url.endswith("/") else url + "/"
    try:
        wait_ready(url, proc, args.timeout)
        args.out.mkdir(parents=True, exist_ok=True)
        d = browser()
        try:
            converse(d, url, DESKTOP, args.timeout)
            shoot(d, args.out / "screenshot-desktop.png")
            converse(d, url, PHONE, args.timeout)
            shoot(d, args.out / "screenshot-phone.png")
            d.execute_script("localStorage.clear()")
        finally:
            d.quit()
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
