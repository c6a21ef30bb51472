"""`GET /metrics`: the server's figures in the Prometheus text format (version 0.0.4), and the
middleware that counts every finished request by endpoint and status.

A collector on the app's own CollectorRegistry reads the scheduler's figures at scrape time
(llmstream/scheduler.py keeps plain counters in `SchedulerMetrics` and imports no Prometheus
code); `prometheus_client` renders them. Three sets of names:

- llama.cpp server's (`llamacpp:` prefix) where one exists: `prompt_tokens_total`,
  `tokens_predicted_total`, `prompt_tokens_seconds`, `predicted_tokens_seconds`,
  `requests_processing`, `requests_deferred`, `kv_cache_usage_ratio`, `n_decode_total`;
- the gauges the Kubernetes Gateway API Inference Extension's endpoint picker (and llm-d's
  scheduler) read from a model server, under vLLM's names: `vllm:num_requests_waiting`,
  `vllm:num_requests_running`, `vllm:kv_cache_usage_perc` (and its older name
  `vllm:gpu_cache_usage_perc`), `vllm:cache_config_info`;
- `llmstream_*` for the rest: readiness, requests by endpoint and status, time to first token and
  inter-token latency histograms, prefix-cache hits, preemptions, finish reasons, pool blocks.

While the model loads every figure is 0 and `llmstream_ready` is 0; the endpoint answers 200
throughout.
"""
from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from ..scheduler import SchedulerMetrics
from .state import STATE, ModelState

# the classic text format every Prometheus-compatible scraper reads (metric names with ':' are
# valid in it); prometheus_client >= 0.22 calls this CONTENT_TYPE_PLAIN_0_0_4
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED = "unmatched"          # the endpoint label of a request no route matched (404, 405)


class ServerCollector:
    """Reads the server's figures at each scrape (on the event loop). Counters the scheduler
    thread bumps are plain ints: reading one is atomic, and a scrape may lag a step at most."""

    def __init__(self, state: ModelState):
        self.state = state

    def collect(self):
        state = self.state
        sched = state.scheduler          # None until the model is loaded (or if it failed)
        m = sched.metrics if sched is not None else None
        pool = sched.pool if sched is not None else None

        def gauge(name, doc, value):
            return GaugeMetricFamily(name, doc, value=value)

        def counter(name, doc, value):
            return CounterMetricFamily(name, doc, value=value)

        waiting = m.waiting if m else 0
        running = m.running if m else 0
        kv_ratio = m.kv_active_blocks / pool.n_blocks if m and pool.n_blocks else 0.0
        prompt_tok_s, gen_tok_s = m.tokens_per_second() if m else (0.0, 0.0)

        yield gauge("llmstream_ready", "1 when the model is loaded and its context prompts "
                    "evaluated (GET /health answers 200), else 0.", int(state.status == "ok"))

        # -- llama.cpp server's names
        yield counter("llamacpp:prompt_tokens_total",
                      "Prompt tokens evaluated (tokens reused from the prefix cache excluded; the "
                      "context prompts evaluated at start-up included).",
                      m.prompt_tokens if m else 0)
        yield counter("llamacpp:tokens_predicted_total", "Tokens generated.",
                      m.tokens_predicted if m else 0)
        yield gauge("llamacpp:prompt_tokens_seconds",
                    "Prompt tokens evaluated per second over the last "
                    f"{SchedulerMetrics.RATE_WINDOW_S:g} s, all sequences together.", prompt_tok_s)
        yield gauge("llamacpp:predicted_tokens_seconds",
                    "Tokens generated per second over the last "
                    f"{SchedulerMetrics.RATE_WINDOW_S:g} s, all sequences together.", gen_tok_s)
        yield gauge("llamacpp:requests_processing",
                    "Requests being generated (their sequences hold slots).", running)
        yield gauge("llamacpp:requests_deferred",
                    "Requests waiting for a slot or KV capacity.", waiting)
        yield gauge("llamacpp:kv_cache_usage_ratio",
                    "Share of the KV pool's blocks held by running sequences (1 = full); blocks "
                    "only cached for reuse are not counted.", kv_ratio)
        yield counter("llamacpp:n_decode_total",
                      "Batched forward passes (scheduler steps).", m.steps if m else 0)

        # -- what the Gateway API Inference Extension / llm-d endpoint picker reads (vLLM's names)
        yield gauge("vllm:num_requests_waiting",
                    "Requests waiting for a slot or KV capacity (queued).", waiting)
        yield gauge("vllm:num_requests_running", "Requests being generated.", running)
        yield gauge("vllm:kv_cache_usage_perc",
                    "KV pool usage by running sequences, 0 to 1 (1 = full).", kv_ratio)
        yield gauge("vllm:gpu_cache_usage_perc",
                    "Older name of vllm:kv_cache_usage_perc (the KV pool is in RAM here).",
                    kv_ratio)
        if pool is not None:
            info = GaugeMetricFamily("vllm:cache_config_info",
                                     "The KV pool's layout (for prefix-aware routing).",
                                     labels=["block_size", "num_gpu_blocks"])
            info.add_metric([str(pool.block_size), str(pool.n_blocks)], 1)
            yield info

        # -- llmstream's own
        requests = CounterMetricFamily("llmstream_http_requests",
                                       "HTTP requests answered, by route and status.",
                                       labels=["endpoint", "status"])
        for (endpoint, status), n in sorted(state.requests.items()):
            requests.add_metric([endpoint, status], n)
        yield requests
        finished = CounterMetricFamily("llmstream_requests_finished",
                                       "Generations ended, by reason (stop, length, cancelled).",
                                       labels=["reason"])
        for reason, n in sorted((m.finish_reasons if m else {}).items()):
            finished.add_metric([reason], n)
        yield finished
        yield _histogram("llmstream_time_to_first_token_seconds",
                         "Submission to the first sampled token, per request.",
                         m.ttft if m else None, SchedulerMetrics.TTFT_BUCKETS)
        yield _histogram("llmstream_inter_token_latency_seconds",
                         "Time between a request's consecutive sampled tokens.",
                         m.itl if m else None, SchedulerMetrics.ITL_BUCKETS)
        # the pool's hit counters are read live (plain ints), so a scrape right after an answer
        # includes it; the block counts come from the snapshot the scheduler takes after a step
        yield counter("llmstream_prefix_cache_hits",
                      "Sequences opened on a cached prefix (including context prompts sharing "
                      "blocks at start-up and preempted sequences resuming).",
                      pool.hits if pool is not None else 0)
        yield counter("llmstream_prefix_cache_hit_tokens",
                      "Prompt tokens taken from the prefix cache instead of evaluated.",
                      pool.hit_tokens if pool is not None else 0)
        yield counter("llmstream_preemptions",
                      "Running sequences sent back to the queue because the KV pool ran dry.",
                      m.preemptions if m else 0)
        yield gauge("llmstream_kv_cache_blocks", "Blocks in the KV pool.",
                    pool.n_blocks if pool is not None else 0)
        yield gauge("llmstream_kv_cache_block_size_tokens", "Tokens per KV block.",
                    pool.block_size if pool is not None else 0)
        yield gauge("llmstream_kv_cache_used_blocks",
                    "Blocks held by sequences or the prefix cache (incl. pinned context prompts).",
                    m.kv_used_blocks if m else 0)
        yield gauge("llmstream_kv_cache_active_blocks", "Blocks held by running sequences.",
                    m.kv_active_blocks if m else 0)
        yield gauge("llmstream_parallel_sequences",
                    "Sequences decoded together at most (--parallel).",
                    sched.parallel if sched is not None else 0)


def _histogram(name: str, doc: str, h, bounds) -> HistogramMetricFamily:
    """A scheduler Histogram (one count per bucket, the last one above every bound) as
    Prometheus's cumulative buckets; the count is the +Inf bucket's."""
    counts = list(h.counts) if h is not None else [0] * (len(bounds) + 1)
    bounds = h.buckets if h is not None else bounds
    buckets, total = [], 0
    for bound, n in zip(list(bounds) + [float("inf")], counts):
        total += n
        buckets.append((floatToGoString(bound), total))
    return HistogramMetricFamily(name, doc, buckets=buckets,
                                 sum_value=h.sum if h is not None else 0.0)


def endpoint_of(request: web.Request) -> str:
    """The route a request matched (its path pattern, so the label set stays small)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


@web.middleware
async def count_requests(request: web.Request, handler):
    """Count each finished request under (endpoint, HTTP status) in ModelState.requests. It sits
    outside error_middleware, so it sees the status errors were answered with."""
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as e:
        status = e.status
        raise
    except asyncio.CancelledError:
        status = 499                     # the client went away and aiohttp dropped the handler
        raise
    finally:
        request.app[STATE].requests[(endpoint_of(request), str(status))] += 1


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: every figure, in the Prometheus text format."""
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def setup(app: web.Application) -> None:
    """The /metrics route, its registry, and the request-counting middleware (outermost)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(app[STATE]))
    app[REGISTRY] = registry
    app.middlewares.insert(0, count_requests)
    app.router.add_get("/metrics", metrics)


REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)
