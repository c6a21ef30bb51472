"""Typed errors. Every error a user can cause (request, file, configuration) derives from
LLMStreamError and carries a message that says what to do."""


class LLMStreamError(Exception):
    """Base class of llmstream's user-facing errors."""


class TokenizerError(LLMStreamError):
    """A tokenizer could not be built or used (missing/unsupported vocabulary, bad tokenizer.json, ...)."""
