"""Where `make run` gets its model: a local file, or a Hugging Face repository through
huggingface_hub's standard cache.

    r = resolve_model("phi-2")                       # the FEATURE default, downloaded once
    r = resolve_model(model_path="/models/x.gguf")    # a local file, no hub at all
    LLM.load(r.model_path, r.tokenizer_path, r.config_path)

Cache first: a file already in the cache is used as it is, without asking the Hub (so a cached model
starts with HF_HUB_OFFLINE=1, with no network, or with huggingface.co down, and a server start never
turns into a surprise multi-GB re-download). Only a file that is not cached is downloaded, with
huggingface_hub's `hf_hub_download` (its progress bars, its cache layout, its token handling).

The cache directory and offline mode are read from the environment at every call (HF_HUB_CACHE,
HF_HOME, XDG_CACHE_HOME, HF_HUB_OFFLINE), not from the values huggingface_hub froze at import time.

Everything that can go wrong with the Hub (offline with nothing cached, unreachable network, missing
repo or file, gated repo) is one HubError whose message names the repo/file, says why in a few words
and how to use a local file instead.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, LLMStreamError

log = logging.getLogger(__name__)

LOCAL_HINT = ("to use a local file instead: make run MODEL_PATH=/path/to/model.gguf "
              "[TOKENIZER_PATH=/path/to/tokenizer.json]")


class HubError(LLMStreamError):
    """A model or tokenizer file could not be had from the Hugging Face Hub (nor its cache).
    `what` is "owner/name/file", `why` the short reason."""

    def __init__(self, message: str, what: str = "", why: str = ""):
        super().__init__(message)
        self.what, self.why = what, why


@dataclass(frozen=True)
class Feature:
    model_repo: str
    model_file: str
    tokenizer_repo: str
    tokenizer_file: str = "tokenizer.json"
    # whether the model can do without tokenizer_repo (its GGUF embeds a vocabulary)
    tokenizer_optional: bool = False


FEATURES: dict[str, Feature] = {
    "phi-2": Feature("lmz/candle-quantized-phi", "model-v2-q4k.gguf", "lmz/candle-quantized-phi"),
    "mistral": Feature("lmz/candle-mistral", "model-q4k.gguf", "lmz/candle-mistral"),
    "llama": Feature("TheBloke/Mistral-7B-Instruct-v0.2-GGUF", "mistral-7b-instruct-v0.2.Q4_K_M.gguf",
                     "mistralai/Mistral-7B-Instruct-v0.2", tokenizer_optional=True),
}


@dataclass(frozen=True)
class ResolvedModel:
    model_path: Path
    tokenizer_path: Path | None   # None: a tokenizer.json beside the model, else the GGUF's vocabulary
    config_path: Path | None      # None: the GGUF's metadata, else a config.json beside the model
    source: str                   # for humans, e.g. "lmz/candle-quantized-phi/model-v2-q4k.gguf (Hugging Face cache)"


# ------------------------------------------------------------------------------------ environment

def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as it is now, or as huggingface_hub read it."""
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def hub_cache_dir() -> Path:
    """huggingface_hub's cache directory, derived from the environment now (the same rules as
    huggingface_hub.constants, which reads them once at import)."""
    def expand(p: str) -> Path:
        return Path(os.path.expandvars(os.path.expanduser(p)))

    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return expand(os.environ[var])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "huggingface")
    return expand(home) / "hub"


# ------------------------------------------------------------------------------------ resolving

def resolve_model(feature: str = "phi-2", *, model_repo: str | None = None, model_file: str | None = None,
                  tokenizer_repo: str | None = None, model_path: str | os.PathLike | None = None,
                  tokenizer_path: str | os.PathLike | None = None,
                  config_path: str | os.PathLike | None = None) -> ResolvedModel:
    """The files to load for `make run`.

    - model_path: that local file, no hub for the model (tokenizer: tokenizer_path, else
      tokenizer_repo when one is given explicitly, else None — beside the model or the GGUF vocab).
    - otherwise the feature's repo/file, with model_repo / model_file / tokenizer_repo overriding
      them; a model_repo other than the feature's needs a model_file.
    - the tokenizer: tokenizer_path, else tokenizer.json from tokenizer_repo (default: the feature's,
      or model_repo when that is overridden). When the tokenizer cannot be had and the feature allows
      it (llama) or it was only guessed (an overridden model_repo), the GGUF's own vocabulary is used,
      with one warning.

    Raises ConfigError (unknown feature, missing local file, model_repo without model_file) or
    HubError (the Hub and its cache could not provide a file).
    """
    feat = FEATURES.get(feature)
    if feat is None:
        raise ConfigError(f"unknown FEATURE '{feature}': choose one of {', '.join(FEATURES)} "
                          "(make run FEATURE=phi-2), or give a local file with MODEL_PATH=")
    model_repo = (model_repo or "").strip() or None
    model_file = (model_file or "").strip() or None
    tokenizer_repo = (tokenizer_repo or "").strip() or None
    tok_local = _local_file(tokenizer_path, "TOKENIZER_PATH", "tokenizer.json") if tokenizer_path else None
    cfg_local = _local_file(config_path, "--config", "config.json") if config_path else None

    if model_path:
        if model_repo or model_file:
            raise ConfigError("give either MODEL_PATH (a local file) or MODEL_REPO/MODEL_FILE (a Hugging Face "
                              "file), not both")
        path = _local_file(model_path, "MODEL_PATH", "GGUF model")
        source = f"{path} (local file)"
        if tok_local is None and tokenizer_repo:
            tok_local = _fetch(tokenizer_repo, feat.tokenizer_file)
            source += f", tokenizer {tokenizer_repo}/{feat.tokenizer_file}"
        return ResolvedModel(path, tok_local, cfg_local, source)

    if model_repo and model_repo != feat.model_repo and not model_file:
        raise ConfigError(f"MODEL_REPO={model_repo} is not the default repository of FEATURE={feature}, so "
                          "llmstream cannot guess which GGUF file in it to serve: give MODEL_FILE=<file>.gguf "
                          "(a file name listed on https://huggingface.co/" + model_repo + ")")
    repo = model_repo or feat.model_repo
    file = model_file or feat.model_file
    repo_overridden = repo != feat.model_repo

    # The tokenizer first (small): a tokenizer that is required and unavailable fails before a
    # multi-GB model download.
    tok_error: HubError | None = None
    tok_desc = ""
    if tok_local is not None:
        tok_desc = f", tokenizer {tok_local}"
    else:
        if tokenizer_repo:
            tok_repo, may_fall_back = tokenizer_repo, False
        elif repo_overridden:
            tok_repo, may_fall_back = repo, True
        else:
            tok_repo, may_fall_back = feat.tokenizer_repo, feat.tokenizer_optional
        try:
            tok_local = _fetch(tok_repo, feat.tokenizer_file)
            tok_desc = f", tokenizer {tok_repo}/{feat.tokenizer_file}"
        except HubError as e:
            if not may_fall_back:
                raise
            tok_error = e

    path = _fetch(repo, file)
    source = f"{repo}/{file} (Hugging Face cache)"
    if tok_error is not None:
        if not _has_vocab(path):
            raise HubError(f"{path} carries no vocabulary, so it needs a tokenizer.json, and {tok_error}",
                           tok_error.what, tok_error.why)
        log.warning("cannot fetch %s: %s; using the vocabulary embedded in %s instead (set "
                    "TOKENIZER_PATH= or TOKENIZER_REPO= to choose a tokenizer)",
                    tok_error.what, tok_error.why, file)
        tok_desc = ", tokenizer from the GGUF's vocabulary"
    return ResolvedModel(path, tok_local, cfg_local, source + tok_desc)


def _local_file(p: str | os.PathLike, what: str, kind: str) -> Path:
    path = Path(os.path.expanduser(str(p))).absolute()  # not resolve(): a symlink (a Hugging Face
    # snapshot entry) must keep its directory, where tokenizer.json / config.json are looked for
    if not path.exists():
        raise ConfigError(f"{what}={p}: no such file; give the path of an existing {kind} file")
    if not path.is_file():
        raise ConfigError(f"{what}={p} is a directory, not a file; give the path of the {kind} file itself")
    return path


def _has_vocab(path: Path) -> bool:
    from .gguf import GGUFFile

    try:
        with GGUFFile(path) as gf:
            return "tokenizer.ggml.model" in gf.metadata
    except LLMStreamError:
        return True  # not a readable GGUF: let the loader say what is wrong with it


# ------------------------------------------------------------------------------------ downloading

def _fetch(repo: str, filename: str) -> Path:
    """The local path of repo/filename: from the cache when it is there, else downloaded into it.
    Every failure becomes a HubError."""
    try:
        import huggingface_hub as hf
        from huggingface_hub import utils as hf_utils
    except ImportError:  # pragma: no cover - a dependency of the package
        raise HubError(f"cannot fetch {repo}/{filename}: the huggingface_hub package is not installed "
                       f"(pip install huggingface-hub) — {LOCAL_HINT}") from None

    cache = hub_cache_dir()
    what = f"{repo}/{filename}"

    def fail(why: str) -> HubError:
        return HubError(f"cannot fetch {what} from Hugging Face: {why} — {LOCAL_HINT}", what, why)

    LocalMissing = hf_utils.LocalEntryNotFoundError   # a subclass of EntryNotFoundError: caught first
    try:
        from huggingface_hub.errors import RemoteEntryNotFoundError as EntryMissing
    except ImportError:  # huggingface_hub < 1.0
        EntryMissing = hf_utils.EntryNotFoundError
    offline = hub_offline()
    try:
        try:
            return Path(hf.hf_hub_download(repo, filename, cache_dir=cache, local_files_only=True))
        except LocalMissing:
            if offline:
                older = _older_snapshot(cache, repo, filename)
                if older is not None:
                    return older
                raise fail(f"it is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE=1 forbids "
                           "downloading (unset it to download)") from None
        unreachable = _hub_unreachable()
        if unreachable:
            older = _older_snapshot(cache, repo, filename)
            if older is not None:
                return older
            raise fail(f"it is not in the Hugging Face cache ({cache}) and huggingface.co cannot "
                       f"be reached ({unreachable})")
        log.info("downloading %s into %s", what, cache)
        return Path(hf.hf_hub_download(repo, filename, cache_dir=cache))
    except HubError:
        raise
    except hf_utils.GatedRepoError:
        raise fail(f"the repository is gated: accept its conditions on https://huggingface.co/{repo} and "
                   "log in (hf auth login, or set HF_TOKEN)") from None
    except hf_utils.RepositoryNotFoundError:
        raise fail("the repository does not exist on huggingface.co (or it is private: log in with "
                   "hf auth login, or set HF_TOKEN)") from None
    except hf_utils.RevisionNotFoundError:
        raise fail("the repository has no 'main' revision") from None
    except LocalMissing as e:
        # online attempt failed at the connection level and the file is not cached
        older = _older_snapshot(cache, repo, filename)
        if older is not None:
            return older
        raise fail(f"it is not in the Hugging Face cache ({cache}) and huggingface.co cannot be reached "
                   f"({_short_cause(e)})") from None
    except EntryMissing:
        raise fail(f"the repository has no file '{filename}' (see https://huggingface.co/{repo}/tree/main)") \
            from None
    except hf_utils.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        raise fail(f"the Hub answered HTTP {status}" if status else _short(e)) from None
    except hf_utils.HFValidationError:
        raise fail(f"'{repo}' is not a valid repository id (owner/name) or '{filename}' is not a valid "
                   "file name") from None
    except OSError as e:
        raise fail(f"cannot write to the cache {cache}: {e.strerror or e} (set HF_HOME to a writable "
                   "directory with enough space)") from None
    except Exception as e:  # proxies, SSL, anything the network stack raises: no traceback for users
        raise fail(_short(e)) from None


_REACH: dict[str, str] = {}


def _hub_unreachable(timeout: float = 5.0) -> str:
    """Why the Hub's host cannot be reached ("" when a TCP connection opens), asked once per run:
    offline, huggingface_hub would retry each file for ~25 s with a warning per attempt; this
    says so at once. The endpoint is HF_ENDPOINT's host (default huggingface.co)."""
    import socket
    from urllib.parse import urlsplit
    url = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    parts = urlsplit(url)
    host = parts.hostname or "huggingface.co"
    port = parts.port or (80 if parts.scheme == "http" else 443)
    if host not in _REACH:
        if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or \
                os.environ.get("HTTP_PROXY") or os.environ.get("http_proxy"):
            _REACH[host] = ""          # through a proxy: let huggingface_hub try
        else:
            try:
                with socket.create_connection((host, port), timeout=timeout):
                    _REACH[host] = ""
            except OSError as e:
                _REACH[host] = f"{type(e).__name__}: {e}"
    return _REACH[host]


def _older_snapshot(cache: Path, repo: str, filename: str) -> Path | None:
    """The file in a snapshot other than the one refs/main names (the repo moved on after it was
    downloaded, e.g. the tokenizer was fetched at a newer commit than the model): the newest such
    copy, for use without the Hub."""
    folder = cache / ("models--" + repo.replace("/", "--")) / "snapshots"
    try:
        found = [snap / filename for snap in folder.iterdir() if (snap / filename).is_file()]
    except OSError:
        return None
    if not found:
        return None
    best = max(found, key=lambda p: p.stat().st_mtime)
    log.info("using %s/%s from an older snapshot in the cache (%s)", repo, filename, best.parent.name)
    return best


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text and text[0] else type(e).__name__


def _short_cause(e: BaseException) -> str:
    cause = e.__cause__ or e.__context__
    while cause is not None and (cause.__cause__ or cause.__context__) is not None:
        cause = cause.__cause__ or cause.__context__
    return _short(cause) if cause is not None else "no connection"
