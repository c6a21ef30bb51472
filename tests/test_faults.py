"""Faults: a model whose numbers are broken is refused at load (with the reason on /health), and an
exception inside one generation ends that one stream with an error while the others, and the
server, go on."""
import shutil
import threading

import numpy as np
import pytest

from conftest import shared_path

from llmstream import sampling
from llmstream.errors import ModelError
from llmstream.generate import LLM
from llmstream.gguf import GGUFFile
from llmstream.sampling import SamplingParams
from llmstream.server.app import create_app
from llmstream.server.state import Settings


def _nan_model(tmp_path):
    """The F32 llama fixture with NaN in its output norm (a damaged file that still parses)."""
    src = shared_path("reference", "llama-gqa-F32.gguf")
    dst = tmp_path / "nan.gguf"
    shutil.copyfile(src, dst)
    with GGUFFile(dst) as gf:
        info = gf.tensors["output_norm.weight"]
        off, n = info.offset, int(np.prod(info.shape))
    with open(dst, "r+b") as f:
        f.seek(off)
        f.write(np.full(n, np.nan, np.float32).tobytes())
    return dst


def test_a_model_with_nan_weights_is_refused_at_load(tmp_path):
    with pytest.raises(ModelError, match="NaN or infinite"):
        LLM.load(_nan_model(tmp_path))


async def test_the_server_reports_a_broken_model_on_health(aiohttp_client, tmp_path):
    import asyncio
    client = await aiohttp_client(create_app(Settings(model_path=str(_nan_model(tmp_path)))))
    for _ in range(500):
        r = await client.get("/health")
        body = await r.json()
        if body["status"] not in ("loading", "warming"):
            break
        await asyncio.sleep(0.02)
    assert r.status == 503 and body["status"] == "error" and "NaN" in body["message"]
    r = await client.post("/token_stream", json={"query": "hi"})
    assert r.status == 503 and "NaN" in (await r.json())["error"]["message"]


def test_a_failing_generation_ends_alone(monkeypatch):
    """Sampling that raises for one request (seed 666) fails that request with its exception;
    the request beside it completes with its solo answer and the scheduler keeps serving."""
    llm = LLM.load(shared_path("reference", "llama-gqa-Q4_K_M.gguf"), parallel=4)
    try:
        params = SamplingParams(temperature=0.8, seed=5, max_tokens=24, repeat_penalty=1.0)
        solo = llm.generate("a calm question", params=params)
        solo_text = solo.text()
        real = sampling.Sampler.sample

        def sample(self, logits, recent=()):
            if self.params.seed == 666 and len(recent) > 3:
                raise RuntimeError("injected sampling fault")
            return real(self, logits, recent)

        monkeypatch.setattr(sampling.Sampler, "sample", sample)
        bad = llm.generate("a doomed question", params=SamplingParams(seed=666, max_tokens=24,
                                                                       repeat_last_n=8))
        good = llm.generate("a calm question", params=params)
        results = {}

        def run(name, g):
            try:
                results[name] = g.text()
            except Exception as e:
                results[name] = e

        threads = [threading.Thread(target=run, args=(n, g)) for n, g in (("bad", bad), ("good", good))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert isinstance(results["bad"], RuntimeError) and "injected" in str(results["bad"])
        assert results["good"] == solo_text and good.stats.finish_reason == solo.stats.finish_reason
        sched = llm.scheduler
        assert sched.n_running == 0 and sched.n_waiting == 0
        assert llm.generate("again", params=SamplingParams(max_tokens=2)).text() is not None
    finally:
        llm.close()
