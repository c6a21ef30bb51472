"""GET /metrics, read back with prometheus_client's own parser: the counters add up to what the
responses reported, the histograms count what was sampled, and the gauges a router reads are there
(and zero while the model loads)."""
import asyncio
import json
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).parent))
from conftest import shared_path  # noqa: E402

from llmstream.scheduler import SchedulerMetrics  # noqa: E402
from llmstream.server.app import create_app  # noqa: E402
from llmstream.server.state import STATE, Settings  # noqa: E402

ROUTER_GAUGES = ("vllm:num_requests_waiting", "vllm:num_requests_running",
                 "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc",
                 "llamacpp:requests_processing", "llamacpp:requests_deferred",
                 "llamacpp:kv_cache_usage_ratio")
HISTOGRAMS = ("llmstream_time_to_first_token_seconds", "llmstream_inter_token_latency_seconds")
PHI2 = "phi2-Q8_0.gguf"


def settings_for(name=PHI2, **kw) -> Settings:
    return Settings(model_path=str(shared_path("reference", name)), **kw)


async def ready(client, timeout=10.0):
    for _ in range(int(timeout / 0.02)):
        if (await client.get("/health")).status == 200:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the model never became ready")


class Scrape:
    """One /metrics answer, parsed: families by name and every sample by (name, labels)."""

    def __init__(self, text: str):
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = {(s.name, frozenset(s.labels.items())): s.value
                        for f in self.families.values() for s in f.samples}

    def __call__(self, name: str, **labels) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def get(self, name: str, default=0.0, **labels) -> float:
        return self.samples.get((name, frozenset(labels.items())), default)

    def requests(self, endpoint: str, status: int) -> float:
        return self.get("llmstream_http_requests_total", endpoint=endpoint, status=str(status))

    def buckets(self, hist: str) -> list[tuple[float, float]]:
        return sorted((float(s.labels["le"]), s.value) for s in self.families[hist].samples
                      if s.name == hist + "_bucket")


async def scrape(client) -> Scrape:
    r = await client.get("/metrics")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return Scrape(await r.text())


def check_histograms(m: Scrape):
    for h in HISTOGRAMS:
        assert m.families[h].type == "histogram"
        b = m.buckets(h)
        assert b[-1][0] == float("inf") and b[-1][1] == m(h + "_count")
        assert all(x[1] <= y[1] for x, y in zip(b, b[1:])), b      # cumulative
        assert m(h + "_sum") >= 0


def check_idle_gauges(m: Scrape):
    for name in ROUTER_GAUGES:
        assert m.families[name].type == "gauge", name
    for name in ("vllm:num_requests_waiting", "vllm:num_requests_running",
                 "llamacpp:requests_processing", "llamacpp:requests_deferred"):
        assert m(name) == 0, name
    ratio = m("llamacpp:kv_cache_usage_ratio")
    assert 0 <= ratio <= 1
    assert m("vllm:kv_cache_usage_perc") == m("vllm:gpu_cache_usage_perc") == ratio


# ----------------------------------------------------------------------------- while loading

async def test_metrics_answer_while_the_model_loads(aiohttp_client):
    from test_server import gated_loader
    slow_load, gate = gated_loader(PHI2)
    client = await aiohttp_client(create_app(Settings(loader=slow_load)))
    try:
        m = await scrape(client)
        assert m("llmstream_ready") == 0
        check_idle_gauges(m)
        check_histograms(m)
        for name in ("llamacpp:prompt_tokens_total", "llamacpp:tokens_predicted_total",
                     "llamacpp:n_decode_total", "llmstream_prefix_cache_hits_total",
                     "llmstream_preemptions_total", "llamacpp:predicted_tokens_seconds"):
            assert m(name) == 0, name
        assert m("llmstream_time_to_first_token_seconds_count") == 0
    finally:
        gate.set()
    await ready(client)
    m = await scrape(client)
    assert m("llmstream_ready") == 1
    pool = client.app[STATE].scheduler.pool
    assert m("vllm:cache_config_info", block_size=str(pool.block_size),
             num_gpu_blocks=str(pool.n_blocks)) == 1
    assert m("llmstream_kv_cache_blocks") == pool.n_blocks


# ----------------------------------------------------------------------------- the counters add up

def sse_events(text: str) -> list:
    out = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[len("data: "):]))
    return out


async def chat(client, content: str, stream: bool, **kw) -> dict:
    """One chat completion -> {"usage", "timings", "finish_reason"}, as the response says."""
    body = {"messages": [{"role": "user", "content": content}], "stream": stream, **kw}
    if stream:
        body["stream_options"] = {"include_usage": True}
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status == 200, await r.text()
    if not stream:
        data = await r.json()
        return {"usage": data["usage"], "timings": data["timings"],
                "finish_reason": data["choices"][0]["finish_reason"]}
    events = sse_events(await r.text())
    usage = [e for e in events if e.get("usage")]
    finish = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    assert len(usage) == 1 and len(finish) == 1
    return {"usage": usage[0]["usage"], "timings": usage[0]["timings"], "finish_reason": finish[0]}


async def completion(client, prompt: str, **kw) -> dict:
    r = await client.post("/v1/completions", json={"prompt": prompt, **kw})
    assert r.status == 200, await r.text()
    data = await r.json()
    return {"usage": data["usage"], "timings": data["timings"],
            "finish_reason": data["choices"][0]["finish_reason"]}


async def test_metrics_counters_add_up_to_the_responses(aiohttp_client):
    client = await aiohttp_client(create_app(settings_for(PHI2)))
    await ready(client)
    state = client.app[STATE]

    base = await scrape(client)
    assert base("llmstream_ready") == 1
    check_idle_gauges(base)
    check_histograms(base)
    # before any request the model has only evaluated the context prompts (pre-warmed): their
    # tokens, less those one context prompt took from another's cached blocks
    assert state.warm_tokens > 0
    assert base("llamacpp:prompt_tokens_total") == \
        state.warm_tokens - base("llmstream_prefix_cache_hit_tokens_total")
    assert base("llamacpp:tokens_predicted_total") == 0
    assert base("llmstream_time_to_first_token_seconds_count") == 0
    assert base("llmstream_inter_token_latency_seconds_count") == 0

    answers = [await chat(client, "Where is Paris?", stream=False, max_tokens=6, temperature=0),
               await chat(client, "Tell me a story", stream=True, max_tokens=9, seed=7)]
    # three at once: they share the batch
    answers += await asyncio.gather(
        chat(client, "Name three colors", stream=True, max_tokens=12, seed=1),
        chat(client, "What is 2+2?", stream=False, max_tokens=5, context_type="math"),
        completion(client, "Once upon a time", max_tokens=8, temperature=0.7, seed=3))
    r = await client.post("/v1/chat/completions",
                          json={"messages": [{"role": "user", "content": "hi"}], "n": 2})
    assert r.status == 400
    r = await client.get("/no/such/route")
    assert r.status == 404

    m = await scrape(client)
    check_histograms(m)
    check_idle_gauges(m)           # every request has ended: nothing running, nothing queued
    assert m("llmstream_ready") == 1

    # requests by endpoint and status (the /metrics scrape above counts once its answer is sent)
    assert m.requests("/v1/chat/completions", 200) == 4
    assert m.requests("/v1/chat/completions", 400) == 1
    assert m.requests("/v1/completions", 200) == 1
    assert m.requests("unmatched", 404) == 1
    assert m.requests("/metrics", 200) == 1
    assert m.requests("/health", 200) >= 1
    assert sum(v for (name, _), v in m.samples.items()
               if name == "llmstream_http_requests_total") == \
        sum(n for (_, status), n in state.requests.items()) - 1   # - this scrape itself

    # tokens: what the responses' usage reported
    usages = [a["usage"] for a in answers]
    cached = [a["timings"]["cached_tokens"] for a in answers]
    assert m("llmstream_preemptions_total") == 0      # (a preempted request re-opens on the cache)
    assert m("llamacpp:tokens_predicted_total") == sum(u["completion_tokens"] for u in usages) > 0
    assert m("llamacpp:prompt_tokens_total") - base("llamacpp:prompt_tokens_total") == \
        sum(u["prompt_tokens"] for u in usages) - sum(cached)
    assert m("llmstream_prefix_cache_hit_tokens_total") - \
        base("llmstream_prefix_cache_hit_tokens_total") == sum(cached) > 0
    assert m("llmstream_prefix_cache_hits_total") - base("llmstream_prefix_cache_hits_total") == \
        sum(1 for c in cached if c)

    # every sampled token is timed: the first of a request in TTFT, each later one in ITL. A
    # generation that ends on EOS sampled it without counting it as a completion token (no stop
    # strings are sent here, so "stop" means EOS)
    sampled = [a["usage"]["completion_tokens"] + (a["finish_reason"] == "stop") for a in answers]
    assert m("llmstream_time_to_first_token_seconds_count") == sum(1 for n in sampled if n >= 1)
    assert m("llmstream_inter_token_latency_seconds_count") == sum(n - 1 for n in sampled if n >= 1)
    assert m("llmstream_time_to_first_token_seconds_sum") > 0
    finished = {s.labels["reason"]: s.value
                for s in m.families["llmstream_requests_finished"].samples}
    assert sum(finished.values()) == len(answers)
    assert finished.get("length", 0) == sum(1 for a in answers if a["finish_reason"] == "length")

    assert m("llamacpp:n_decode_total") > base("llamacpp:n_decode_total")
    assert m("llamacpp:predicted_tokens_seconds") >= 0 and m("llamacpp:prompt_tokens_seconds") >= 0
    used, active = m("llmstream_kv_cache_used_blocks"), m("llmstream_kv_cache_active_blocks")
    assert 0 <= active <= used <= m("llmstream_kv_cache_blocks")
    assert m("llmstream_parallel_sequences") == state.scheduler.parallel
    health = await (await client.get("/health")).json()     # the same figures as /health's
    assert health["slots_busy"] == m("llamacpp:requests_processing") == 0
    assert health["waiting"] == m("llamacpp:requests_deferred") == 0
    assert 0 <= health["kv_used"] <= 1    # (the pool's snapshot may have moved since the scrape)


# ----------------------------------------------------------------------------- the rate gauge

def test_tokens_per_second_averages_the_last_window():
    m = SchedulerMetrics()
    t0, w = m._t0, SchedulerMetrics.RATE_WINDOW_S
    for i in range(1, 601):                 # 20 tokens/s for 30 s, a step every 50 ms
        m.tokens_predicted += 1
        m._mark(t0 + i * 0.05)
    assert len(m._marks) <= 2 * w / 0.25 + 3    # marks are coalesced and pruned
    _, gen = m.tokens_per_second(t0 + 30)
    assert gen == pytest.approx(20, rel=0.03)
    assert m.tokens_per_second(t0 + 30 + w / 2)[1] == pytest.approx(10, rel=0.06)
    assert m.tokens_per_second(t0 + 30 + w + 1) == (0.0, 0.0)
    young = SchedulerMetrics()              # younger than the window: over its age
    for i in range(1, 41):
        young.tokens_predicted += 1
        young._mark(young._t0 + i * 0.05)
    assert young.tokens_per_second(young._t0 + 2)[1] == pytest.approx(20)
