"""Typed errors. Everything a user can cause (a file, a request, a setting) raises one of these, with a
message that says what was wrong and what to do; the server maps them to HTTP statuses in one place
(`llmstream.server.errors.status_of`)."""


class LLMStreamError(Exception):
    """Base of every error llmstream raises on purpose."""


class GGUFError(LLMStreamError):
    """A GGUF file is malformed, truncated or uses something llmstream cannot read."""


class ModelError(LLMStreamError):
    """A model file is readable but not a model llmstream can run (architecture, shapes, config)."""


class TokenizerError(LLMStreamError):
    """A tokenizer could not be built or used (missing/unsupported vocabulary, bad tokenizer.json, ...)."""


class ConfigError(LLMStreamError):
    """A configuration file or setting is invalid or missing."""


class RequestError(LLMStreamError):
    """A request (HTTP body, CLI flags, generation parameters) is invalid."""


class ContextLengthError(RequestError):
    """The prompt (plus the tokens asked for) does not fit the model's context."""


class RequestTimeout(RequestError):
    """The request body did not arrive in time (a slow or stalled client)."""


class TooManyConnections(LLMStreamError):
    """One client address holds more open connections than the server allows."""


class Unauthorized(LLMStreamError):
    """The request carries no API key, or a wrong one (the server was started with --api-key)."""


class ContextFullError(LLMStreamError):
    """The KV cache cannot hold more tokens."""


class Busy(LLMStreamError):
    """The server's wait queue is full."""


class NotReady(LLMStreamError):
    """The model is still loading, or failed to load, or the server is shutting down."""


class ClientGone(ConnectionResetError):
    """The client closed its connection: there is nobody to answer. A ConnectionResetError (not an
    LLMStreamError), so it ends a request the way any lost connection does."""
