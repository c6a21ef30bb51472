"""Exception hierarchy shared by every llmstream module.

``LLMStreamError`` is the base; catch it to handle any error llmstream raises on purpose.
``ConfigError``  -- a configuration file, environment variable or CLI setting is wrong; the message
                    names the file/key and says how to fix it.
``RequestError`` -- a client request (HTTP body, CLI arguments for one generation) is invalid; the
                    HTTP layer maps it to 400 Bad Request with the message as the error text.
"""


class LLMStreamError(Exception):
    """Base class of all errors llmstream raises deliberately."""


class ConfigError(LLMStreamError):
    """Invalid or missing configuration (files, environment, command-line settings)."""


class RequestError(LLMStreamError):
    """Invalid client request: bad parameter type or value, malformed messages."""
