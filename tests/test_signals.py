"""`llmstream serve` and signals: SIGTERM lets running answers finish (up to --shutdown-timeout)
and exits 0; a second SIGTERM exits at once."""
import http.client
import json
import signal
import subprocess
import sys
import threading
import time

from conftest import ROOT, shared_path
from test_make_run import free_port, wait_healthy


def _serve(*flags):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmstream.cli", "serve", "--model",
         str(shared_path("reference", "phi2-Q8_0.gguf")), "--port", str(port), "--threads", "1",
         "--token-delay-ms", "40", *flags],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_healthy(f"http://127.0.0.1:{port}", proc)
    return proc, port


def _ask(port, max_tokens, out: dict, started: threading.Event):
    """POST /token_stream, reading raw chunks: out["body"], out["complete"] (last chunk seen)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/token_stream", json.dumps({"query": "x", "max_tokens": max_tokens}),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    body = b""
    try:
        body += r.read1(1)
        started.set()
        body += r.read()
        out["complete"] = True
    except http.client.IncompleteRead as e:
        body += e.partial
        out["complete"] = False
    out["body"] = body
    started.set()


def test_sigterm_lets_the_running_answer_finish_then_exits_0():
    proc, port = _serve("--shutdown-timeout", "30")
    try:
        out, started = {}, threading.Event()
        t = threading.Thread(target=_ask, args=(port, 40, out, started))
        t.start()
        assert started.wait(30)
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert out["complete"] and out["body"]
        assert proc.wait(30) == 0
    finally:
        proc.kill()


def test_a_second_sigterm_exits_at_once():
    proc, port = _serve("--shutdown-timeout", "60")
    try:
        out, started = {}, threading.Event()
        t = threading.Thread(target=_ask, args=(port, 400, out, started))    # ~16 s of answer
        t.start()
        assert started.wait(30)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) != 0 and time.monotonic() - t0 < 10
        t.join(30)
        assert out.get("complete") is False        # the answer was visibly cut
        assert "stopped at once" in proc.stderr.read()
    finally:
        proc.kill()


def test_a_port_in_use_is_one_clear_line_and_exit_1_before_any_download(tmp_path):
    """Checked before the hub is asked: the model named here does not exist anywhere, and the
    offline hub would fail slowly with retries — the port is refused first."""
    import os
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = dict(os.environ, HF_HOME=str(tmp_path), HF_HUB_OFFLINE="1")
        for cmd in (["serve", "--model-repo", "nobody/nothing", "--model-file", "x.gguf"],
                    ["demo", "--random-weights"]):
            r = subprocess.run([sys.executable, "-m", "llmstream.cli", *cmd, "--port", str(port)],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
            assert r.returncode == 1, r.stderr
            lines = [l for l in r.stderr.splitlines() if l.strip()]
            assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0], r.stderr
            assert "--port" in lines[0]
