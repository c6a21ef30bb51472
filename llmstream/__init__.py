"""llmstream: a small CPU LLM server for quantized GGUF models (llama, mistral, phi-2)."""
__version__ = "0.1.0"
