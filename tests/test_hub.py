"""llmstream.hub: where `make run` gets its model. Every test runs with HF_HOME in a tmp dir, a
hand-made Hugging Face cache (refs/, snapshots/, blobs/ as huggingface_hub writes them) and sockets
that refuse to connect, so nothing here can touch the network."""
import hashlib
import logging
import os
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from llmstream import hub
from llmstream.errors import ConfigError
from llmstream.generate import LLM
from llmstream.gguf import GGUFFile
from llmstream.hub import HubError, ResolvedModel, resolve_model
from llmstream.sampling import SamplingParams
from llmstream.tokenizer import Tokenizer

from conftest import shared_path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
PHI_REPO, PHI_FILE = "lmz/candle-quantized-phi", "model-v2-q4k.gguf"
LLAMA_REPO, LLAMA_FILE = "TheBloke/Mistral-7B-Instruct-v0.2-GGUF", "mistral-7b-instruct-v0.2.Q4_K_M.gguf"
LLAMA_TOK_REPO = "mistralai/Mistral-7B-Instruct-v0.2"


class NoNetwork(AssertionError):
    pass


def _refuse(*args, **kwargs):
    raise OSError(101, "Network is unreachable (blocked by test_hub)")


@pytest.fixture(autouse=True)
def hf_env(tmp_path, monkeypatch):
    """A private HF_HOME, offline mode, and no way out of the machine."""
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setattr(socket, "getaddrinfo", _refuse)
    return home / "hub"


def cache_file(cache: Path, repo: str, filename: str, src: Path | bytes, commit: str = COMMIT) -> Path:
    """Put a file into a Hugging Face cache the way hf_hub_download leaves it."""
    data = src if isinstance(src, bytes) else Path(src).read_bytes()
    folder = cache / ("models--" + repo.replace("/", "--"))
    blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    pointer = folder / "snapshots" / commit / filename
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return pointer


def phi2_tokenizer_json() -> bytes:
    """A tokenizer.json matching the phi-2 fixture's vocabulary (its 1024 embedded GPT-2 pieces)."""
    with GGUFFile(shared_path("reference", "phi2-Q4_0.gguf")) as gf:
        return Tokenizer.from_gguf_metadata(gf.metadata).hf.to_str().encode()


@pytest.fixture
def cached_phi2(hf_env):
    """The phi-2 feature's files in the cache: candle model, tokenizer.json, config.json."""
    cache_file(hf_env, PHI_REPO, PHI_FILE, shared_path("reference", "phi2-Q4_0.candle.gguf"))
    cache_file(hf_env, PHI_REPO, "tokenizer.json", phi2_tokenizer_json())
    cache_file(hf_env, PHI_REPO, "config.json", shared_path("reference", "phi2.config.json"))
    return hf_env


def test_default_phi2_feature_resolves_to_the_cache_and_loads(cached_phi2):
    r = resolve_model()
    assert isinstance(r, ResolvedModel)
    snapshot = cached_phi2 / "models--lmz--candle-quantized-phi" / "snapshots" / COMMIT
    assert r.model_path == snapshot / PHI_FILE
    assert r.tokenizer_path == snapshot / "tokenizer.json"
    assert r.config_path is None
    assert f"{PHI_REPO}/{PHI_FILE}" in r.source and "cache" in r.source
    with pytest.raises(Exception):
        r.source = "x"  # frozen
    llm = LLM.load(r.model_path, r.tokenizer_path, r.config_path)
    try:
        assert llm.model.config.layout == "candle" and llm.model.config.n_vocab == 1024  # config.json beside
        g = llm.generate("Hello world", raw=True, params=SamplingParams(temperature=0, max_tokens=4))
        g.text()
        assert g.stats.completion_tokens == 4
    finally:
        llm.close()


def test_cache_is_found_through_the_environment_of_the_call(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert hub.hub_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"


def test_missing_model_offline_is_one_clear_error(hf_env):
    cache_file(hf_env, PHI_REPO, "tokenizer.json", phi2_tokenizer_json())   # the model is not cached
    with pytest.raises(HubError) as e:
        resolve_model("phi-2")
    msg = str(e.value)
    assert f"{PHI_REPO}/{PHI_FILE}" in msg
    assert "HF_HUB_OFFLINE" in msg and str(hf_env) in msg
    assert "make run MODEL_PATH=/path/to/model.gguf" in msg and "TOKENIZER_PATH=" in msg
    assert e.value.__cause__ is None and e.value.__suppress_context__   # no chained traceback


def test_missing_tokenizer_of_a_candle_model_is_an_error_before_any_model_download(hf_env, monkeypatch):
    calls = []
    real = hub._fetch
    monkeypatch.setattr(hub, "_fetch", lambda repo, f: calls.append(f) or real(repo, f))
    with pytest.raises(HubError, match="lmz/candle-mistral/tokenizer.json"):
        resolve_model("mistral")
    assert calls == ["tokenizer.json"]


def test_llama_feature_without_its_tokenizer_repo_uses_the_gguf_vocabulary(hf_env, caplog):
    cache_file(hf_env, LLAMA_REPO, LLAMA_FILE, shared_path("reference", "llama-gqa-Q4_K_M.gguf"))
    with caplog.at_level(logging.WARNING, logger="llmstream.hub"):
        r = resolve_model("llama")
    assert r.model_path.name == LLAMA_FILE and r.tokenizer_path is None
    warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"{LLAMA_TOK_REPO}/tokenizer.json" in warnings[0].getMessage()
    assert "vocabulary embedded" in warnings[0].getMessage()
    llm = LLM.load(r.model_path, r.tokenizer_path, r.config_path)
    try:
        assert llm.tokenizer.kind == "spm"
    finally:
        llm.close()


def test_llama_feature_uses_its_tokenizer_repo_when_cached(hf_env):
    cache_file(hf_env, LLAMA_REPO, LLAMA_FILE, shared_path("reference", "llama-gqa-Q4_K_M.gguf"))
    tok = cache_file(hf_env, LLAMA_TOK_REPO, "tokenizer.json", b"{}", commit="f" * 40)
    r = resolve_model("llama")
    assert r.tokenizer_path == tok and LLAMA_TOK_REPO in r.source


def test_model_path_bypasses_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    def no_hub(*a, **k):
        raise NoNetwork("the hub must not be used with MODEL_PATH")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    model = shared_path("reference", "phi2-Q4_0.gguf")
    tok = tmp_path / "tokenizer.json"
    tok.write_bytes(phi2_tokenizer_json())
    r = resolve_model("mistral", model_path=model, tokenizer_path=tok)
    assert r.model_path == model.absolute() and r.tokenizer_path == tok.absolute()
    assert "local" in r.source
    assert resolve_model(model_path=model).tokenizer_path is None

    # a symlinked model keeps its own directory (tokenizer.json/config.json beside it are found there)
    link = tmp_path / "model.gguf"
    link.symlink_to(model)
    assert resolve_model(model_path=link).model_path == link
    with pytest.raises(ConfigError, match="MODEL_PATH=/no/such/model.gguf"):
        resolve_model(model_path="/no/such/model.gguf")
    with pytest.raises(ConfigError, match="TOKENIZER_PATH="):
        resolve_model(model_path=model, tokenizer_path=tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="not both"):
        resolve_model(model_path=model, model_repo="x/y", model_file="z.gguf")


def test_unknown_feature():
    with pytest.raises(ConfigError) as e:
        resolve_model("gpt-5")
    assert all(f in str(e.value) for f in ("'gpt-5'", "phi-2", "mistral", "llama"))


def test_model_repo_overrides(hf_env, caplog):
    with pytest.raises(ConfigError, match="MODEL_FILE"):
        resolve_model("phi-2", model_repo="someone/phi-2-gguf")
    # another repo with a GGUF that embeds its vocabulary and no tokenizer.json: the GGUF vocab, one warning
    cache_file(hf_env, "someone/phi-2-gguf", "phi-2.Q4_0.gguf", shared_path("reference", "phi2-Q4_0.gguf"))
    with caplog.at_level(logging.WARNING, logger="llmstream.hub"):
        r = resolve_model("phi-2", model_repo="someone/phi-2-gguf", model_file="phi-2.Q4_0.gguf")
    assert r.model_path.name == "phi-2.Q4_0.gguf" and r.tokenizer_path is None
    assert sum(rec.levelno == logging.WARNING for rec in caplog.records) == 1
    # ... and its tokenizer.json once it has one
    tok = cache_file(hf_env, "someone/phi-2-gguf", "tokenizer.json", phi2_tokenizer_json())
    assert resolve_model("phi-2", model_repo="someone/phi-2-gguf",
                         model_file="phi-2.Q4_0.gguf").tokenizer_path == tok
    # the feature's own repo needs no MODEL_FILE; MODEL_FILE alone picks another file of it
    cache_file(hf_env, PHI_REPO, "tokenizer.json", phi2_tokenizer_json())
    cache_file(hf_env, PHI_REPO, "model-v2-q80.gguf", shared_path("reference", "phi2-Q8_0.candle.gguf"))
    assert resolve_model("phi-2", model_file="model-v2-q80.gguf").model_path.name == "model-v2-q80.gguf"
    with pytest.raises(HubError, match=f"{PHI_REPO}/{PHI_FILE}"):
        resolve_model("phi-2", model_repo=PHI_REPO)
    # an explicit TOKENIZER_REPO that cannot be had is an error, not a silent fallback
    with pytest.raises(HubError, match="other/tok/tokenizer.json"):
        resolve_model("phi-2", model_repo="someone/phi-2-gguf", model_file="phi-2.Q4_0.gguf",
                      tokenizer_repo="other/tok")


def test_a_candle_model_without_any_tokenizer_says_so(hf_env):
    cache_file(hf_env, "someone/candle", "m.gguf", shared_path("reference", "phi2-Q4_0.candle.gguf"))
    with pytest.raises(HubError, match="no vocabulary.*someone/candle/tokenizer.json"):
        resolve_model("phi-2", model_repo="someone/candle", model_file="m.gguf")


def test_unreachable_network_uses_the_cache_or_says_why(cached_phi2, monkeypatch):
    """Not offline by configuration, but the network is down (sockets refuse): cached files work;
    a file that is not cached is a HubError about the connection (after huggingface_hub's retries,
    whose sleeps are skipped here)."""
    from huggingface_hub import constants
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(time, "sleep", lambda s: None)
    r = resolve_model("phi-2")
    assert r.model_path.name == PHI_FILE and r.tokenizer_path.name == "tokenizer.json"
    with pytest.raises(HubError) as e:
        resolve_model("phi-2", model_file="model-v2-q80.gguf")
    msg = str(e.value)
    assert f"{PHI_REPO}/model-v2-q80.gguf" in msg and "cannot be reached" in msg
    assert "MODEL_PATH=" in msg


def _http_error(cls, status):
    response = SimpleNamespace(status_code=status, headers={}, request=None)
    return cls(f"{status} Client Error", response=response)


def test_gated_and_missing_repos(hf_env, monkeypatch, caplog):
    """The Hub's answers (faked: no network in tests) become HubErrors or the llama fallback."""
    import huggingface_hub
    from huggingface_hub import utils as hf_utils

    real = huggingface_hub.hf_hub_download
    answers = {}

    def fake(repo_id, filename, *, local_files_only=False, **kw):
        if local_files_only:
            return real(repo_id, filename, local_files_only=True, **kw)
        raise answers[repo_id]
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    monkeypatch.setattr(hub, "_hub_unreachable", lambda: "")    # the faked Hub answers
    monkeypatch.delenv("HF_HUB_OFFLINE")
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    answers[PHI_REPO] = _http_error(hf_utils.GatedRepoError, 401)
    with pytest.raises(HubError, match=f"{PHI_REPO}/tokenizer.json.*gated.*MODEL_PATH="):
        resolve_model("phi-2")
    answers[PHI_REPO] = _http_error(hf_utils.RepositoryNotFoundError, 404)
    with pytest.raises(HubError, match="does not exist"):
        resolve_model("phi-2")
    try:
        from huggingface_hub.errors import RemoteEntryNotFoundError as missing
    except ImportError:  # huggingface_hub < 1.0
        missing = hf_utils.EntryNotFoundError
    answers[PHI_REPO] = _http_error(missing, 404)
    with pytest.raises(HubError, match="has no file 'tokenizer.json'"):
        resolve_model("phi-2")
    answers[PHI_REPO] = _http_error(hf_utils.HfHubHTTPError, 503)
    with pytest.raises(HubError, match="HTTP 503"):
        resolve_model("phi-2")

    # llama: a gated tokenizer repo falls back to the GGUF vocabulary with one warning
    cache_file(hf_env, LLAMA_REPO, LLAMA_FILE, shared_path("reference", "llama-gqa-Q4_K_M.gguf"))
    answers[LLAMA_TOK_REPO] = _http_error(hf_utils.GatedRepoError, 401)
    with caplog.at_level(logging.WARNING, logger="llmstream.hub"):
        r = resolve_model("llama")
    assert r.tokenizer_path is None
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1 and "gated" in warnings[0]


def test_offline_a_file_of_an_older_snapshot_is_used(hf_env):
    """The model was downloaded at one commit, then refs/main moved on (the tokenizer was fetched
    later): offline, the model of the older snapshot is still found."""
    old = cache_file(hf_env, PHI_REPO, PHI_FILE, shared_path("reference", "phi2-Q4_0.candle.gguf"),
                     commit="a" * 40)
    tok = cache_file(hf_env, PHI_REPO, "tokenizer.json", phi2_tokenizer_json(), commit="b" * 40)
    r = resolve_model("phi-2")
    assert r.model_path == old and r.tokenizer_path == tok


def test_an_unreachable_hub_fails_at_once_without_retries(hf_env, monkeypatch, caplog):
    """Offline but not configured so: one clear error at once (huggingface_hub would retry each
    file for ~25 s with a warning per attempt), never a download attempt."""
    import huggingface_hub
    from huggingface_hub import constants

    real = huggingface_hub.hf_hub_download

    def no_download(repo_id, filename, *, local_files_only=False, **kw):
        assert local_files_only, "tried to download from an unreachable hub"
        return real(repo_id, filename, local_files_only=True, **kw)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(hub, "_REACH", {})
    with pytest.raises(HubError, match="cannot be reached.*MODEL_PATH="):
        resolve_model("phi-2")
    assert "Retry" not in caplog.text
