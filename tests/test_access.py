"""--api-key and --cors-origin: the API needs the key (401 JSON otherwise, compared in constant
time), /health and the page stay public; CORS only for the configured origins."""
import pytest

from conftest import shared_path

from llmstream.server.app import create_app
from llmstream.server.state import Settings
from test_server import ready

KEY = "s3cret-key"
ASK = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture
async def client(aiohttp_client):
    settings = Settings(model_path=str(shared_path("reference", "phi2-Q8_0.gguf")), api_key=KEY,
                        cors_origins=("https://app.example",))
    c = await aiohttp_client(create_app(settings))
    await ready(c)
    return c


async def test_the_api_needs_the_key(client):
    for headers, what in [({}, "needs an API key"), ({"Authorization": "Bearer wrong"}, "wrong"),
                          ({"Authorization": "Basic " + KEY}, "needs an API key")]:
        for path in ("/v1/chat/completions", "/token_stream", "/v1/models", "/metrics"):
            r = await client.request("GET" if path in ("/v1/models", "/metrics") else "POST", path,
                                     json=ASK, headers=headers)
            body = await r.json()
            assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer", path
            assert body["error"]["type"] == "authentication_error" and what in body["error"]["message"]
            assert KEY not in body["error"]["message"]
    r = await client.post("/v1/chat/completions", json=ASK, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status == 200 and (await r.json())["choices"]
    r = await client.get("/v1/models", headers={"X-Api-Key": KEY})
    assert r.status == 200


async def test_health_and_the_page_stay_public(client):
    assert (await client.get("/health")).status == 200
    assert (await client.get("/")).status == 200


async def test_cors_only_for_the_configured_origin(client):
    pre = {"Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization, content-type"}
    r = await client.options("/v1/chat/completions", headers={"Origin": "https://app.example", **pre})
    assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "authorization" in r.headers["Access-Control-Allow-Headers"].lower()
    r = await client.options("/v1/chat/completions", headers={"Origin": "https://evil.example", **pre})
    assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
    r = await client.post("/v1/chat/completions", json={**ASK, "stream": True},
                          headers={"Origin": "https://app.example", "Authorization": f"Bearer {KEY}"})
    assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "[DONE]" in await r.text()
    r = await client.get("/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in r.headers


async def test_no_key_configured_means_open_and_no_cors(aiohttp_client):
    c = await aiohttp_client(create_app(Settings(model_path=str(shared_path("reference", "phi2-Q8_0.gguf")))))
    await ready(c)
    r = await c.post("/v1/chat/completions", json=ASK, headers={"Origin": "https://app.example"})
    assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers


def test_listening_beyond_loopback_without_a_key_warns():
    import subprocess
    import sys

    from conftest import ROOT
    from test_make_run import free_port
    proc = subprocess.Popen([sys.executable, "-m", "llmstream.cli", "serve", "--model",
                             str(shared_path("reference", "phi2-Q8_0.gguf")), "--host", "0.0.0.0",
                             "--port", str(free_port())],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "serving on" in line:
                break
        assert any("without an API key" in l and "--api-key" in l for l in lines), lines
    finally:
        proc.kill()
        proc.wait()
