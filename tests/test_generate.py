"""Generation over real fixture models (llama.cpp's reference files with their embedded vocabularies)."""
import re
import threading

import numpy as np
import pytest

from llmstream.engine import Session
from llmstream.errors import ContextLengthError, RequestError
from llmstream.generate import LLM
from llmstream.sampling import SamplingParams

from conftest import shared_path

GREEDY = SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=16)


@pytest.fixture(scope="module", params=["llama-gqa-Q8_0", "phi2-Q4_K_M"])
def case(request):
    name = request.param
    llm = LLM.load(shared_path("reference", f"{name}.gguf"))
    yield name, llm
    llm.close()


def test_temperature_zero_follows_llama_cpp_greedy_continuation(case):
    name, llm = case
    ref = np.load(shared_path("reference", "reference.npz"))
    g = llm.generate(tokens=ref[f"{name}/tokens"], params=GREEDY)
    text = g.text()
    assert g.tokens == list(ref[f"{name}/greedy"])
    assert g.stats.finish_reason == "length" and g.stats.completion_tokens == 16
    assert text == llm.tokenizer.decode(g.tokens).lstrip()  # an answer starts at its first non-space


def test_temperature_zero_is_the_argmax_of_the_logits(case):
    _, llm = case
    prompt = llm.encode("Hello world, this is a test")
    g = llm.generate(tokens=prompt, params=SamplingParams(temperature=0, repeat_penalty=1.0,
                                                           max_tokens=6))
    g.text()
    s = Session(llm.model)
    seq = list(prompt)
    for tok in g.tokens:
        logits = s.prefill(seq) if s.n_past == 0 else s.decode_step(seq[-1])
        assert tok == int(np.argmax(logits))
        seq.append(tok)


def test_pieces_concatenate_to_the_full_decode_and_seed_reproduces(case):
    _, llm = case
    params = SamplingParams(temperature=1.0, top_p=1.0, seed=1234, max_tokens=40)
    g1 = llm.generate("Tell me a story", params=params)
    pieces = list(g1)
    assert len(pieces) > 1
    # a random model emits invalid UTF-8 byte runs: the whole-sequence decoder replaces a whole
    # invalid run (even a valid control byte inside it) while the stream emits each byte as soon as
    # it is certain (documented in StreamDecoder); the text around such runs must be identical
    fffd = lambda s: re.sub("[\ufffd\x00-\x1f]+", "\ufffd", s)
    assert fffd("".join(pieces)) == fffd(llm.tokenizer.decode(g1.tokens).lstrip())
    g2 = llm.generate("Tell me a story", params=params)
    assert g2.text() == "".join(pieces) and g2.tokens == g1.tokens
    assert g2.stats.cached_tokens > 0  # the shared prompt prefix was reused
    g3 = llm.generate("Tell me a story", params=SamplingParams(temperature=1.0, top_p=1.0,
                                                                 seed=99, max_tokens=40))
    assert g3.tokens != g1.tokens


def test_stop_string_split_across_tokens_is_never_emitted(case):
    _, llm = case
    params = SamplingParams(temperature=0.0, repeat_penalty=1.0, max_tokens=40)
    full = llm.generate("Once upon a time", params=params)
    text = full.text()
    toks = full.tokens
    # a stop string that starts inside one token's text and ends inside a later one's
    pieces = [llm.tokenizer.decode(toks[:i]) for i in range(len(toks) + 1)]
    start = len(pieces[4]) - 1
    end = len(pieces[7]) + 1
    stop = text[start:end]
    assert len(stop) >= 3
    g = llm.generate("Once upon a time", params=SamplingParams(
        temperature=0.0, repeat_penalty=1.0, max_tokens=40, stop=(stop,)))
    out = g.text()
    assert out == text[:text.index(stop)]
    assert g.stats.finish_reason == "stop"


def test_cancel_stops_between_tokens(case):
    _, llm = case
    cancel = threading.Event()
    g = llm.generate("Count", params=SamplingParams(temperature=1.0, max_tokens=200), cancel=cancel)
    done, seen = threading.Event(), []

    def sink(kind, value):       # on the scheduler thread: cancel right after the third piece
        if kind == "piece":
            seen.append(value)
            if len(seen) == 3:
                cancel.set()
                seen.append(len(g.tokens))
        else:
            done.set()

    g.start(sink)
    assert done.wait(30)
    assert g.stats.finish_reason == "cancelled"
    assert g.stats.completion_tokens == seen[3]     # not one token after the cancel


def test_an_iteration_left_early_cancels_its_generation(case):
    _, llm = case
    g = llm.generate("Count", params=SamplingParams(temperature=1.0, max_tokens=300))
    for _ in g:
        break
    g.close()
    assert g.stats.finish_reason == "cancelled" and g.stats.completion_tokens < 300


def test_context_limits(case):
    _, llm = case
    long_prompt = "word " * 400
    with pytest.raises(ContextLengthError, match="exceeds the context of 512 tokens by"):
        llm.generate(long_prompt, raw=True, params=SamplingParams(max_tokens=200))
    g = llm.generate(long_prompt, raw=True, params=SamplingParams(max_tokens=200), truncate=True)
    g.text()
    assert g.stats.truncated_tokens > 0 and g.stats.prompt_tokens + 200 <= 512
    g = llm.generate("word " * 30, raw=True, params=SamplingParams(temperature=0.0, max_tokens=2000,
                                                                  repeat_penalty=1.0),
                     clamp_max_tokens=True)
    g.text()
    assert g.stats.finish_reason in ("length", "stop")
    assert g.stats.prompt_tokens + g.stats.completion_tokens <= 512


def test_request_errors(case):
    _, llm = case
    with pytest.raises(RequestError):
        llm.generate()
    with pytest.raises(RequestError):
        llm.generate(123)
    with pytest.raises(RequestError, match="context"):
        llm.generate("hi", context_type="no-such-context")
    with pytest.raises(RequestError, match="outside the vocabulary"):
        llm.generate(tokens=[10 ** 6])


def test_chat_messages_and_a_hostile_chat_template_fall_back_safely(case):
    _, llm = case
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    expected = llm.format_chat(msgs)
    saved = llm.chat_template
    try:
        llm.chat_template = "{{ cycler.__init__.__globals__.os.system('touch /tmp/pwned') }}"
        assert llm.format_chat(msgs) == expected  # built-in format used instead
        g = llm.generate(messages=msgs, params=SamplingParams(max_tokens=5))
        g.text()
        assert g.stats.completion_tokens >= 1
    finally:
        llm.chat_template = saved
    import os
    assert not os.path.exists("/tmp/pwned")


def test_an_answer_starts_at_its_first_non_space_character(case):
    """The model's first tokens after the prompt are often ' word' or a newline: the answer text
    starts at its first non-space character (whitespace inside it stays)."""
    _, llm = case
    for seed in range(6):
        g = llm.generate("Tell me", params=SamplingParams(temperature=1.0, seed=seed, max_tokens=12))
        text = g.text()
        assert text == text.lstrip()
        assert text == llm.tokenizer.decode(g.tokens).lstrip() or "\ufffd" in text
