"""A bounded load test of `llmstream serve` on loopback (`make soak`): N clients for M seconds with
mixed streamed / non-streamed / cancelled / malformed requests, against a server it starts itself.

    python scripts/soak.py [--seconds 60] [--clients 8] [--model FILE] [--max-rss-growth-mb 64]

Every answered request is checked: a seeded answer must equal the reference answer the same
request got alone before the load (no lost, duplicated or mixed-up tokens between streams);
malformed requests must get their 4xx; nothing may get a 5xx. Prints requests/s, counts by kind
and status, the server's RSS and open file descriptors at start and end, then one JSON line;
exits 1 when a check failed or RSS grew by more than --max-rss-growth-mb.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT.parent / "shared" / "reference" / "phi2-Q8_0.gguf"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# the requests whose answers are checked: (path, body); seeded, so each has one right answer
def _cases(n: int = 6) -> list[tuple[str, dict]]:
    out = []
    for i in range(n):
        out.append(("/token_stream", {"query": f"soak question {i}", "temperature": 0.9,
                                      "seed": 100 + i, "max_tokens": 24}))
        out.append(("/v1/chat/completions", {"messages": [{"role": "user", "content": f"soak {i}"}],
                                             "temperature": 0.7, "seed": 200 + i, "max_tokens": 24}))
    return out


async def _answer(s: aiohttp.ClientSession, base: str, path: str, body: dict, stream: bool) -> tuple[int, str]:
    """(status, the answer's text) of one request, streamed or not."""
    if path == "/token_stream":
        async with s.post(base + path, json=body) as r:
            return r.status, await r.text()
    async with s.post(base + path, json={**body, "stream": stream}) as r:
        if r.status != 200:
            return r.status, await r.text()
        if not stream:
            return r.status, (await r.json())["choices"][0]["message"]["content"]
        text = []
        async for line in r.content:
            line = line.decode().strip()
            if line.startswith("data: {"):
                for c in json.loads(line[6:]).get("choices", []):
                    text.append(c.get("delta", {}).get("content") or "")
        return r.status, "".join(text)


async def _client(s, base, cases, refs, t_end, rng, stats):
    while time.monotonic() < t_end:
        kind = rng.choice(["stream", "stream", "whole", "cancel", "malformed"])
        path, body = rng.choice(cases)
        try:
            if kind == "malformed":
                bad = rng.choice([b'{"query": ', b'{"query": 5}', b"[1, 2", b'{"messages": "x"}',
                                  b'{"query": "x", "max_tokens": -1}'])
                async with s.post(base + rng.choice(["/token_stream", "/v1/chat/completions"]),
                                  data=bad, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    stats["status"][r.status] += 1
                    if r.status != 400:
                        stats["failures"].append(f"malformed body got {r.status}")
            elif kind == "cancel":
                streamed = body if path == "/token_stream" else {**body, "stream": True}
                async with s.post(base + path, json=streamed) as r:
                    stats["status"][r.status] += 1
                    if r.status != 200:
                        stats["failures"].append(f"{path} cancel: status {r.status}")
                    await r.content.readany()
                    r.close()                           # gone after the first piece
            else:
                status, text = await _answer(s, base, path, body, stream=(kind == "stream"))
                stats["status"][status] += 1
                if status == 200 and text != refs[(path, json.dumps(body))]:
                    stats["failures"].append(f"{path} {kind}: the answer differs from its reference")
                elif status != 200 and status < 500 and status != 503:
                    stats["failures"].append(f"{path} {kind}: status {status}")
            stats["kinds"][kind] += 1
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            stats["errors"][type(e).__name__] += 1
            if kind != "cancel":
                stats["failures"].append(f"{kind}: {type(e).__name__}: {e}")


async def _soak(base: str, pid: int, seconds: float, clients: int, seed: int) -> dict:
    cases = _cases()
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        refs = {}
        for path, body in cases:                    # each answer alone, before the load
            status, text = await _answer(s, base, path, body, stream=False)
            assert status == 200, (status, text)
            refs[(path, json.dumps(body))] = text
        rss0, fds0 = _rss_mb(pid), _fds(pid)
        stats = {"status": collections.Counter(), "kinds": collections.Counter(),
                 "errors": collections.Counter(), "failures": []}
        t0 = time.monotonic()
        t_end = t0 + seconds
        await asyncio.gather(*(_client(s, base, cases, refs, t_end, random.Random(seed + i), stats)
                               for i in range(clients)))
        elapsed = time.monotonic() - t0
    await asyncio.sleep(0.5)                           # cancelled requests end at the next step
    n = sum(stats["kinds"].values())
    return dict(seconds=round(elapsed, 1), clients=clients, requests=n,
                requests_per_s=round(n / elapsed, 2), by_kind=dict(stats["kinds"]),
                by_status={str(k): v for k, v in sorted(stats["status"].items())},
                client_errors=dict(stats["errors"]),
                server_errors_5xx=sum(v for k, v in stats["status"].items() if k >= 500 and k != 503),
                failures=stats["failures"][:20], n_failures=len(stats["failures"]),
                rss_mb_start=round(rss0, 1), rss_mb_end=round(_rss_mb(pid), 1),
                fds_start=fds0, fds_end=_fds(pid))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--model", default=str(MODEL))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-rss-growth-mb", type=float, default=64.0)
    args = p.parse_args(argv)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "llmstream.cli", "serve", "--model", args.model, "--port", str(port),
         "--threads", "1", "--parallel", "4", "--max-queue", str(4 * args.clients),
         "--max-client-connections", "0"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    pass
                import urllib.request
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            print("soak: the server never became ready", file=sys.stderr)
            return 1
        r = asyncio.run(_soak(base, server.pid, args.seconds, args.clients, args.seed))
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
    growth = r["rss_mb_end"] - r["rss_mb_start"]
    ok = not r["n_failures"] and not r["server_errors_5xx"] and growth <= args.max_rss_growth_mb
    print(f"soak: {r['requests']} requests in {r['seconds']} s ({r['requests_per_s']}/s) from "
          f"{r['clients']} clients; by kind {r['by_kind']}; by status {r['by_status']}; "
          f"client-side errors {r['client_errors']}; 5xx {r['server_errors_5xx']}; "
          f"failed checks {r['n_failures']}; server RSS {r['rss_mb_start']} -> {r['rss_mb_end']} MB; "
          f"open fds {r['fds_start']} -> {r['fds_end']}", file=sys.stderr)
    for f in r["failures"]:
        print(f"  {f}", file=sys.stderr)
    print(json.dumps(dict(r, ok=ok)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
