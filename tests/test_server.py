"""The HTTP service, driven for real through aiohttp's test server with llama.cpp's tiny reference
models (random weights, embedded vocabularies: the text is gibberish, but it is real text from a
real tokenizer and sampler)."""
import asyncio
import json
import sys
import threading
from pathlib import Path

import pytest
from aiohttp import web

sys.path.insert(0, str(Path(__file__).parent))
from conftest import shared_path  # noqa: E402

from llmstream.errors import ModelError  # noqa: E402
from llmstream.generate import LLM  # noqa: E402
from llmstream.server.app import create_app  # noqa: E402
from llmstream.server.state import STATE, Settings  # noqa: E402

PHI2 = "phi2-Q8_0.gguf"
LLAMA = "llama-gqa-Q4_K_M.gguf"


def settings_for(name=PHI2, **kw) -> Settings:
    return Settings(model_path=str(shared_path("reference", name)), **kw)


async def ready(client, timeout=30.0):
    for _ in range(int(timeout / 0.02)):
        r = await client.get("/health")
        if r.status == 200:
            return await r.json()
        await asyncio.sleep(0.02)
    raise AssertionError("the model never became ready")


@pytest.fixture
def make_client(aiohttp_client):
    async def make(**kw):
        name = kw.pop("model", PHI2)
        client = await aiohttp_client(create_app(settings_for(name, **kw)))
        await ready(client)
        return client
    return make


async def until(cond, timeout=10.0, what="the condition"):
    """Wait (polling) until cond() holds; generous for a loaded CI machine."""
    for _ in range(int(timeout / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def one_generating_one_waiting(client, first_tokens: int, second_tokens: int):
    """Start a generation and queue a second request behind it (a server with --parallel 1):
    (first, second) response futures."""
    state = client.app[STATE]
    first = asyncio.ensure_future(client.post("/token_stream",
                                              json={"query": "a", "max_tokens": first_tokens}))
    await until(lambda: state.generating, what="the first request to generate")
    second = asyncio.ensure_future(client.post("/token_stream",
                                               json={"query": "b", "max_tokens": second_tokens}))
    await until(lambda: state.waiting >= 1, what="the second request to wait")
    return first, second


def assert_error(body, status_text=None):
    assert set(body) == {"error"} and body["error"]["type"] and body["error"]["message"]
    if status_text:
        assert status_text in body["error"]["message"], body["error"]["message"]


# ----------------------------------------------------------------------------- /health, loading

def gated_loader(name=PHI2):
    """(loader, gate): a Settings.loader that loads the model only once gate is set (at most 10 s)."""
    gate = threading.Event()
    path = str(shared_path("reference", name))

    def slow_load():
        gate.wait(10)
        return LLM.load(path)
    return slow_load, gate


async def test_health_says_loading_until_the_model_is_ready(aiohttp_client):
    slow_load, gate = gated_loader()
    client = await aiohttp_client(create_app(Settings(loader=slow_load)))
    r = await client.get("/health")
    assert r.status == 503 and (await r.json()) == {"status": "loading"}
    r = await client.post("/token_stream", json={"query": "hi"})
    assert r.status == 503 and "loading" in (await r.json())["error"]["message"]
    assert r.headers["Retry-After"]
    gate.set()
    info = await ready(client)
    assert info["status"] == "ok" and info["model"] == "phi2"
    assert {"general", "sql", "classifier", "math"} <= set(info["context_types"])
    assert info["default_context_type"] == "general" and info["n_ctx"] == 512


async def test_a_model_that_fails_to_load_is_reported_not_crashed(aiohttp_client):
    def bad_load():
        raise ModelError("model.gguf: unknown architecture 'gpt-j'; llmstream runs llama and phi2")

    client = await aiohttp_client(create_app(Settings(loader=bad_load)))
    for _ in range(100):
        r = await client.get("/health")
        body = await r.json()
        if body["status"] != "loading":
            break
        await asyncio.sleep(0.02)
    assert r.status == 503 and body["status"] == "error" and "gpt-j" in body["message"]
    r = await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert r.status == 503 and "gpt-j" in (await r.json())["error"]["message"]


# ----------------------------------------------------------------------------- /token_stream

async def test_token_stream_arrives_in_several_chunks_before_the_end(make_client):
    client = await make_client(token_delay_ms=20)
    r = await client.post("/token_stream", json={"query": "Tell me a story", "max_tokens": 12})
    assert r.status == 200
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert r.headers.get("Transfer-Encoding") == "chunked"
    chunks = []
    while chunk := await r.content.readany():
        chunks.append(chunk)
    assert len(chunks) >= 3, chunks     # pieces arrive one by one, not as one body at the end
    assert b"".join(chunks).decode()


@pytest.mark.parametrize("model", [PHI2, LLAMA])
async def test_token_stream_equals_the_non_streamed_completion_for_the_same_seed(make_client, model):
    client = await make_client(model=model)
    req = {"temperature": 0.9, "top_p": 0.95, "seed": 1234, "max_tokens": 40}
    r = await client.post("/token_stream", json={"query": "What is the capital of France?", **req})
    streamed = await r.text()
    r = await client.post("/v1/completions", json={"prompt": "What is the capital of France?",
                                                   "context_type": "general", **req})
    body = await r.json()
    assert r.status == 200, body
    assert streamed and body["choices"][0]["text"] == streamed
    n, finish = body["usage"]["completion_tokens"], body["choices"][0]["finish_reason"]
    assert (n == 40 and finish == "length") or (0 < n < 40 and finish == "stop")
    # the same seed reproduces; another seed (almost surely) does not
    r = await client.post("/token_stream", json={"query": "What is the capital of France?", **req})
    assert await r.text() == streamed
    r = await client.post("/token_stream", json={"query": "What is the capital of France?",
                                                 **{**req, "seed": 99}})
    assert await r.text() != streamed


async def test_token_stream_matches_the_engine_directly(make_client):
    client = await make_client()
    r = await client.post("/token_stream", json={"query": "Name a color", "context_type": "sql",
                                                 "temperature": 0, "max_tokens": 25})
    text = await r.text()
    with LLM.load(shared_path("reference", PHI2)) as llm:
        from llmstream.sampling import SamplingParams
        expected = llm.generate("Name a color", context_type="sql",
                                params=SamplingParams(temperature=0, max_tokens=25)).text()
    assert text == expected


async def test_default_context_type_is_the_servers(make_client):
    client = await make_client(context_type="math")
    q = {"query": "What is 2+2?", "temperature": 0, "max_tokens": 10}
    default = await (await client.post("/token_stream", json=q)).text()
    math = await (await client.post("/token_stream", json={**q, "context_type": "math"})).text()
    general = await (await client.post("/token_stream", json={**q, "context_type": "general"})).text()
    assert default == math != general


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("body,status,text", [
    (b"{not json", 400, "not valid JSON"),
    (b"", 400, "empty"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b'{"question": "hi"}', 400, "unknown field"),
    (b'{"max_tokens": 5}', 400, '"query"'),
    (b'{"query": 42}', 400, "must be a string"),
    (b'{"query": ""}', 400, "must not be empty"),
    (b'{"query": "hi", "temperature": "hot"}', 400, "temperature must be a number"),
    (b'{"query": "hi", "temperature": -1}', 400, "temperature must be >= 0"),
    (b'{"query": "hi", "top_p": 0}', 400, "top_p"),
    (b'{"query": "hi", "max_tokens": 0}', 400, "max_tokens"),
    (b'{"query": "hi", "seed": -5}', 400, "seed"),
    (b'{"query": "hi", "stop": 3}', 400, "stop"),
    (b'{"query": "hi", "context_type": "pirate"}', 400, "unknown context type 'pirate'"),
    (b'{"query": "hi", "max_tokens": 100000}', 400, "exceeds the context of 512 tokens by"),
    (b'\xff\xfe', 400, "UTF-8"),
])
async def test_bad_requests_get_400_with_a_message(make_client, body, status, text):
    client = await make_client()
    r = await client.post("/token_stream", data=body, headers={"Content-Type": "application/json"})
    assert r.status == status
    assert_error(await r.json(), text)
    # and the server is still fine
    assert (await client.get("/health")).status == 200


async def test_a_prompt_that_cannot_fit_says_by_how_much(make_client):
    client = await make_client()
    r = await client.post("/token_stream", json={"query": "word " * 600})
    body = await r.json()
    assert r.status == 400 and body["error"]["code"] == "context_length_exceeded"
    assert "exceeds the context of 512 tokens by" in body["error"]["message"]


async def test_a_body_over_the_limit_gets_413(make_client):
    client = await make_client(max_body_bytes=1000)
    r = await client.post("/token_stream", json={"query": "x" * 2000})
    assert r.status == 413
    assert_error(await r.json(), "larger than the limit of 1000 bytes")
    r = await client.post("/token_stream", json={"query": "fits", "max_tokens": 2})
    assert r.status == 200


async def test_unknown_routes_and_methods_get_json_errors(make_client):
    client = await make_client()
    r = await client.get("/nowhere")
    assert r.status == 404
    assert_error(await r.json(), "/token_stream")
    r = await client.get("/token_stream")
    assert r.status == 405
    assert_error(await r.json(), "POST")


@pytest.mark.parametrize("path,body,text", [
    ("/v1/chat/completions", {}, '"messages"'),
    ("/v1/chat/completions", {"messages": "hi"}, "messages must be a list"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, "role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 2}, "n = 1"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "frobnicate": 1},
     "unrecognized request argument"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "presence_penalty": 1},
     "repeat_penalty"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 9999},
     "by"),
    ("/v1/completions", {"prompt": ["a", "b"]}, "one prompt"),
    ("/v1/completions", {}, '"prompt"'),
    ("/v1/completions", {"prompt": "x", "top_k": -1}, "top_k"),
])
async def test_openai_endpoints_reject_bad_requests(make_client, path, body, text):
    client = await make_client()
    r = await client.post(path, json=body)
    assert r.status == 400
    assert_error(await r.json(), text)


# ----------------------------------------------------------------------------- OpenAI API

async def test_sse_stream_concatenates_to_the_non_streamed_chat_answer(make_client):
    client = await make_client()
    req = {"messages": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Why is the sky blue?"}],
           "temperature": 0.7, "seed": 7, "max_tokens": 30}
    whole = await (await client.post("/v1/chat/completions", json=req)).json()
    assert whole["object"] == "chat.completion"
    assert whole["choices"][0]["message"]["role"] == "assistant"
    r = await client.post("/v1/chat/completions", json={**req, "stream": True,
                                                        "stream_options": {"include_usage": True}})
    assert r.headers["Content-Type"].startswith("text/event-stream")
    raw = (await r.text()).split("\n\n")
    assert raw[-1] == "" and raw[-2] == "data: [DONE]"
    events = [json.loads(e[len("data: "):]) for e in raw[:-2]]
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == events[0]["id"] for e in events)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["choices"] == [] and events[-1]["usage"] == whole["usage"]
    assert events[-1]["timings"]["gen_tok_s"] > 0
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[1:-1])
    assert text == whole["choices"][0]["message"]["content"] and text


async def test_the_official_openai_client_works_unchanged(make_client):
    openai = pytest.importorskip("openai")
    client = await make_client(model=LLAMA)
    oa = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)
    models = await oa.models.list()
    assert [m.id for m in models.data] == ["llama-gqa"]

    msgs = [{"role": "user", "content": "Write a haiku about the sea."}]
    whole = await oa.chat.completions.create(model="llama-gqa", messages=msgs, max_tokens=20,
                                             temperature=0, seed=3)
    n = whole.usage.completion_tokens
    assert whole.choices[0].finish_reason == ("length" if n == 20 else "stop") and 0 < n <= 20
    stream = await oa.chat.completions.create(model="llama-gqa", messages=msgs, max_tokens=20,
                                              temperature=0, seed=3, stream=True,
                                              stream_options={"include_usage": True})
    parts, finish, usage = [], None, None
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            parts.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(parts) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason and usage.total_tokens == whole.usage.total_tokens

    comp = await oa.completions.create(model="llama-gqa", prompt="Once upon a time", max_tokens=8,
                                       temperature=0)
    stream = await oa.completions.create(model="llama-gqa", prompt="Once upon a time", max_tokens=8,
                                         temperature=0, stream=True)
    assert "".join([c.choices[0].text async for c in stream]) == comp.choices[0].text

    with pytest.raises(openai.BadRequestError) as e:
        await oa.chat.completions.create(model="llama-gqa", messages=msgs, temperature=-2)
    assert "temperature" in str(e.value)
    await oa.close()


# ----------------------------------------------------------------------------- concurrency

async def test_a_client_that_disconnects_frees_the_model(make_client):
    client = await make_client(token_delay_ms=50)
    state = client.app[STATE]
    r = await client.post("/token_stream", json={"query": "go on forever", "max_tokens": 400})
    assert await r.content.readany()
    r.close()                               # the client goes away mid-stream
    await until(lambda: state.finished and not state.generating, what="the cancelled generation")
    stats = state.finished[-1]
    assert stats.finish_reason == "cancelled" and stats.completion_tokens < 20
    r = await client.post("/token_stream", json={"query": "next", "max_tokens": 3})
    assert r.status == 200 and await r.text()
    assert state.finished[-1].finish_reason == "length"


async def test_a_client_that_leaves_while_waiting_costs_no_generation(make_client):
    client = await make_client(token_delay_ms=40, parallel=1)
    state = client.app[STATE]
    first, waiting = await one_generating_one_waiting(client, 10, 10)
    n_before = len(state.finished)
    waiting.cancel()                        # the waiting client goes away
    resp = await first
    assert resp.status == 200 and await resp.text()
    r = await client.post("/token_stream", json={"query": "c", "max_tokens": 2})
    assert r.status == 200 and await r.text()
    # the waiting request ended without a token (it never got a slot); the others ran in full
    ends = list(state.finished)[n_before:]
    assert [(s.finish_reason, s.completion_tokens) for s in ends] == [
        ("cancelled", 0), ("length", 10), ("length", 2)]
    assert state.llm.scheduler.usage()["slots_busy"] == 0


async def test_concurrent_requests_each_get_their_own_text(make_client):
    client = await make_client(token_delay_ms=2)
    reqs = [{"query": "First question", "temperature": 0.8, "seed": 1, "max_tokens": 25},
            {"query": "Another, different one", "temperature": 0.8, "seed": 2, "max_tokens": 25},
            {"query": "First question", "temperature": 0, "max_tokens": 25}]

    async def ask(req):
        r = await client.post("/token_stream", json=req)
        assert r.status == 200
        return await r.text()

    together = await asyncio.gather(*(ask(q) for q in reqs))
    alone = [await ask(q) for q in reqs]
    assert together == alone and len(set(alone)) == 3


async def test_eight_concurrent_streams_each_equal_their_solo_answer(make_client):
    """--parallel 8: eight streamed answers (both APIs, seeded and greedy, different prompts) are
    generated together — the server had eight running at once — and each equals its answer alone."""
    client = await make_client(parallel=8, token_delay_ms=5)
    state = client.app[STATE]
    reqs = [("/token_stream", {"query": f"Question number {i}", "temperature": 0.9, "seed": i,
                               "max_tokens": 20}) for i in range(5)]
    reqs += [("/v1/chat/completions", {"messages": [{"role": "user", "content": f"Chat {i}"}],
                                       "stream": True, "temperature": 0.7 * i, "seed": 40 + i,
                                       "max_tokens": 20}) for i in range(3)]
    peak = 0

    async def watch():
        nonlocal peak
        while True:
            peak = max(peak, state.running)
            await asyncio.sleep(0.002)

    async def ask(path, body):
        r = await client.post(path, json=body)
        assert r.status == 200
        return await r.text()

    watcher = asyncio.ensure_future(watch())
    together = await asyncio.gather(*(ask(p, b) for p, b in reqs))
    watcher.cancel()
    alone = [await ask(p, b) for p, b in reqs]
    assert peak == 8, f"at most {peak} ran at once"
    strip = lambda sse: [l for l in sse.splitlines() if l.startswith("data: {")]
    for (path, _), a, b in zip(reqs, together, alone):
        if path == "/token_stream":
            assert a == b
        else:   # SSE: the same chunks but for the id and timestamp of each response
            norm = lambda t: [json.loads(l[6:])["choices"] for l in strip(t)]
            assert norm(a) == norm(b)


async def test_a_full_queue_answers_503_with_retry_after(make_client):
    client = await make_client(token_delay_ms=30, max_queue=1, parallel=1)
    first, second = await one_generating_one_waiting(client, 15, 2)
    r = await client.post("/token_stream", json={"query": "c", "max_tokens": 2})
    assert r.status == 503 and r.headers["Retry-After"]
    assert_error(await r.json(), "waiting")
    for fut in (first, second):
        resp = await fut
        assert resp.status == 200 and await resp.text()


async def _shutdown_during_an_answer(aiohttp_server, path: str, body: dict, timeout: float):
    """Start an answer, shut the server down (as SIGTERM does) after its first bytes: -> (app,
    the bytes the client read, the error reading the rest raised or None)."""
    from aiohttp import ClientPayloadError, ClientSession
    app = create_app(settings_for(token_delay_ms=50, shutdown_timeout=timeout))
    server = await aiohttp_server(app)
    async with ClientSession() as s:
        while (await s.get(server.make_url("/health"))).status != 200:
            await asyncio.sleep(0.02)
        r = await s.post(server.make_url(path), json=body)
        data = await r.content.readany()
        closing = asyncio.ensure_future(server.close())
        err = None
        try:
            data += await asyncio.wait_for(r.content.read(), 10)
        except ClientPayloadError as e:
            err = e
        await asyncio.wait_for(closing, 10)
    return app, data, err


async def test_shutdown_lets_a_running_answer_finish_within_the_timeout(aiohttp_server):
    app, data, err = await _shutdown_during_an_answer(
        aiohttp_server, "/token_stream", {"query": "x", "max_tokens": 12}, timeout=10)
    assert err is None and data
    assert app[STATE].finished[-1].finish_reason == "length"


async def test_shutdown_cancels_what_outlasts_the_timeout_and_says_so(aiohttp_server):
    # /token_stream: the chunked body ends without its last chunk (an incomplete transfer)
    app, data, err = await _shutdown_during_an_answer(
        aiohttp_server, "/token_stream", {"query": "x", "max_tokens": 400}, timeout=0)
    assert app[STATE].finished[-1].finish_reason == "cancelled"
    assert err is not None, "the cut-short answer looked complete"
    # SSE: the last choice says "cancelled" and an error event tells why, then [DONE]
    app, data, err = await _shutdown_during_an_answer(
        aiohttp_server, "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 400, "stream": True},
        timeout=0)
    assert err is None
    events = [json.loads(line[6:]) for line in data.decode().splitlines()
              if line.startswith("data: {")]
    assert events[-2]["choices"][0]["finish_reason"] == "cancelled"
    assert "shutting down" in events[-1]["error"]["message"]
    assert data.decode().rstrip().endswith("data: [DONE]")


def test_settings_with_an_unknown_default_context_type_fail_at_start():
    from llmstream.prompts import UnknownContextError
    with pytest.raises(UnknownContextError, match="pirate"):
        create_app(Settings(model_path="unused.gguf", context_type="pirate"))


def test_web_application_type():
    assert isinstance(create_app(Settings(model_path="unused.gguf")), web.Application)


async def test_health_reports_loading_progress_in_bytes(aiohttp_client, tmp_path):
    """While the model loads, /health says how much of the file has been read; LLM.load reads it
    once, reporting each chunk."""
    gate = threading.Event()
    path = str(shared_path("reference", PHI2))
    app = create_app(Settings(loader=lambda: (app[STATE]._progress(3 << 20, 12 << 20), gate.wait(10),
                                              LLM.load(path))[-1]))
    client = await aiohttp_client(app)
    for _ in range(500):
        body = await (await client.get("/health")).json()
        if "loading" in body:
            break
        await asyncio.sleep(0.01)
    assert body == {"status": "loading", "loading": {"done": 3 << 20, "total": 12 << 20}}
    gate.set()
    await ready(client)
    seen = []
    LLM.load(path, progress=lambda d, t: seen.append((d, t))).close()
    size = Path(path).stat().st_size
    assert seen and seen[-1] == (size, size) and all(t == size for _, t in seen)
