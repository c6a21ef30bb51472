import logging
import textwrap

import pytest

from llmstream import prompts
from llmstream.errors import ConfigError, LLMStreamError, RequestError
from llmstream.prompts import (
    DEFAULT_PROMPT_CONFIG, ENV_PROMPT_CONFIG, UnknownContextError, format_messages, format_prompt,
    get_context, load_contexts, normalize_family, prompt_config_path,
)

ORIGINAL = {
    "general": "You are an assistant that gives straight answers to given instructions",
    "classifier": "Please classify a sentence into one of the three categories : Fashion , Electronics or General.",
    "sql": "You are a SQL Expert, specialized in MySQL. You will be given a table schema, and you will be requested "
           "to get some information out of this table. You will construct appropriate and optimized SQL Query.",
    "math": "You are a MIT student and you became expert in solving elegantly mathematical problems.",
}

# mistralai/Mistral-7B-Instruct-v0.2 / Mixtral-8x7B-Instruct-v0.1 tokenizer_config.json chat_template
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    monkeypatch.delenv(ENV_PROMPT_CONFIG, raising=False)
    monkeypatch.setattr(prompts, "_warned", set())   # "warn once" state per test


def write(tmp_path, text, name="prompts.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


# ============================================================================ contexts

def test_default_config_has_the_original_texts():
    assert DEFAULT_PROMPT_CONFIG.is_file()
    c = load_contexts()
    assert dict(c) == ORIGINAL
    assert c.source == DEFAULT_PROMPT_CONFIG


def test_env_variable_and_explicit_path(tmp_path, monkeypatch):
    a = write(tmp_path, 'context_general = "from env"\n', "a.toml")
    b = write(tmp_path, 'context_general = "explicit"\n', "b.toml")
    monkeypatch.setenv(ENV_PROMPT_CONFIG, str(a))
    assert prompt_config_path() == a
    assert load_contexts()["general"] == "from env"
    assert load_contexts(b)["general"] == "explicit"      # an explicit path wins
    monkeypatch.setenv(ENV_PROMPT_CONFIG, "")
    assert prompt_config_path() == DEFAULT_PROMPT_CONFIG


def test_user_added_context_becomes_a_context_type(tmp_path):
    p = write(tmp_path, '''
        # my contexts
        context_general = "You are helpful"
        context_pirate = "You are a pirate. Answer like one"
        context_multi-line = """First line
        Second line"""
    ''')
    c = load_contexts(p)
    assert c["pirate"] == "You are a pirate. Answer like one"
    assert c["multi-line"] == "First line\nSecond line"
    assert get_context("pirate", c) == c["pirate"]
    assert get_context("context_pirate", c) == c["pirate"]
    assert get_context("pirate", path=p) == c["pirate"]
    assert format_prompt("phi-2", "Where is the treasure?", get_context("pirate", c)) == (
        "Context: You are a pirate. Answer like one.\nInstruct: Where is the treasure?\nOutput:")


def test_unknown_context_names_file_and_fix(tmp_path):
    p = write(tmp_path, 'context_general = "x"\n')
    with pytest.raises(UnknownContextError) as exc:
        get_context("pirate", load_contexts(p))
    msg = str(exc.value)
    # the file's name, never the server's absolute path (the message reaches HTTP clients)
    assert p.name in msg and str(p.parent) not in msg
    assert "context_pirate" in msg and "general" in msg
    assert isinstance(exc.value, ConfigError) and isinstance(exc.value, RequestError)
    with pytest.raises(UnknownContextError, match="prompt_config.toml"):
        get_context("nope")


@pytest.mark.parametrize("text, fragments", [
    ('context_general = "unterminated\n', ["not valid TOML"]),
    ("context_general = You are\n", ["not valid TOML"]),
    ("context_general = 3\n", ["context_general must be a string", 'context_general = "text"']),
    ('context_general = ["a"]\n', ["context_general must be a string"]),
    ('general = "x"\n', ["unknown key 'general'", "context_general"]),
    ('[contexts]\ngeneral = "x"\n', ["unknown key 'contexts'"]),
    ('context_ = "x"\n', ["invalid context name"]),
    ('"context_a b" = "x"\n', ["invalid context name"]),
    ('context_general = "   "\n', ["context_general is empty"]),
    ("# nothing here\n", ["defines no contexts"]),
])
def test_malformed_config(tmp_path, text, fragments):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_contexts(p)
    msg = str(exc.value)
    assert str(p) in msg
    for f in fragments:
        assert f in msg
    assert isinstance(exc.value, LLMStreamError)


def test_missing_and_binary_config(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_contexts(tmp_path / "missing.toml")
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b'context_general = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load_contexts(bad)


# ============================================================================ built-in formats

def test_phi2_format():
    assert format_prompt("phi-2", "What is 2+2", "Be brief") == "Context: Be brief.\nInstruct: What is 2+2.\nOutput:"
    assert format_prompt("phi-2", "What is 2+2?", None) == "Instruct: What is 2+2?\nOutput:"
    assert format_prompt("phi-2", "  hi \n", "") == "Instruct: hi.\nOutput:"
    # no doubled period after text that already ends a sentence
    assert format_prompt("phi-2", "I love my phone", ORIGINAL["classifier"]) == (
        "Context: " + ORIGINAL["classifier"] + "\nInstruct: I love my phone.\nOutput:")
    assert format_prompt("phi-2", "Solve x+1=2", ORIGINAL["math"]).startswith(
        "Context: You are a MIT student and you became expert in solving elegantly mathematical problems.\n")


@pytest.mark.parametrize("family", ["mistral", "llama", "llama2", "Mistral"])
def test_inst_format(family):
    assert format_prompt(family, "Tell me a joke", ORIGINAL["general"]) == (
        "[INST] You are an assistant that gives straight answers to given instructions\n\nTell me a joke [/INST]")
    assert format_prompt(family, "Tell me a joke", None) == "[INST] Tell me a joke [/INST]"
    assert format_prompt(family, "q", None, bos_token="<s>") == "<s>[INST] q [/INST]"


def test_family_names():
    assert normalize_family("phi2") == normalize_family("PHI-2") == "phi-2"
    assert normalize_family("llama-2") == "llama"
    with pytest.raises(ConfigError, match="unknown model family 'gpt2'"):
        format_prompt("gpt2", "q", None)


@pytest.mark.parametrize("query, context, fragment", [
    (None, None, "query must be a string"),
    ("   ", None, "query must not be empty"),
    ("q", 5, "context must be a string"),
])
def test_format_prompt_errors(query, context, fragment):
    with pytest.raises(RequestError, match=fragment):
        format_prompt("phi-2", query, context)


CHAT = [
    {"role": "system", "content": "You are terse"},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Name a colour"},
]


def test_messages_phi2_multi_turn():
    assert format_messages("phi-2", CHAT) == (
        "Context: You are terse.\nInstruct: Hi.\nOutput: Hello.\nInstruct: Name a colour.\nOutput:")


def test_messages_inst_multi_turn():
    assert format_messages("mistral", CHAT) == (
        "[INST] You are terse\n\nHi [/INST] Hello.</s>[INST] Name a colour [/INST]")
    assert format_messages("llama", CHAT, eos_token="<EOS>", bos_token="<s>") == (
        "<s>[INST] You are terse\n\nHi [/INST] Hello.<EOS>[INST] Name a colour [/INST]")


def test_messages_single_prompt_equivalence():
    for fam in ("phi-2", "mistral"):
        assert format_messages(fam, [{"role": "system", "content": "ctx"}, {"role": "user", "content": "q"}]) \
            == format_prompt(fam, "q", "ctx")


def test_messages_default_context_and_merging():
    msgs = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    assert format_messages("mistral", msgs, context="ctx") == "[INST] ctx\n\na\n\nb [/INST]"
    # an explicit system message beats the default context; several are joined
    msgs2 = [{"role": "system", "content": "s1"}, {"role": "system", "content": "s2"},
             {"role": "user", "content": "q", "name": "ignored"}]
    assert format_messages("mistral", msgs2, context="ctx") == "[INST] s1\n\ns2\n\nq [/INST]"
    # OpenAI text parts
    parts = [{"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]}]
    assert format_messages("phi-2", parts) == "Instruct: x\ny.\nOutput:"


@pytest.mark.parametrize("messages, fragment", [
    ([], "messages must not be empty"),
    ("hello", "messages must be a list"),
    ([["user", "hi"]], "messages[0] must be an object"),
    ([{"role": "tool", "content": "x"}], "messages[0].role must be one of system, user, assistant"),
    ([{"content": "x"}], "messages[0].role"),
    ([{"role": "user", "content": 3}], "messages[0].content must be a string"),
    ([{"role": "user", "content": None}], "got null"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "messages[0].content[0] must be a text part"),
    ([{"role": "system", "content": "s"}], "must start with a user message"),
    ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}], "must start with a user message"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "last message must be a user"),
    ([{"role": "user", "content": "q"}, {"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
     "messages[1]: system messages must come before"),
])
def test_message_errors(messages, fragment):
    with pytest.raises(RequestError) as exc:
        format_messages("mistral", messages)
    assert fragment in str(exc.value)


# ============================================================================ chat templates

def test_mistral_chat_template():
    msgs = [
        {"role": "user", "content": "Hello, how are you?"},
        {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
        {"role": "user", "content": "I'd like to show off how chat templating works!"},
    ]
    assert format_messages("mistral", msgs, MISTRAL_TEMPLATE, bos_token="<s>", eos_token="</s>") == (
        "<s>[INST] Hello, how are you? [/INST]I'm doing great. How can I help you today?</s>"
        "[INST] I'd like to show off how chat templating works! [/INST]")


def test_template_without_system_role_gets_it_folded(caplog):
    with caplog.at_level(logging.WARNING, logger="llmstream.prompts"):
        out = format_prompt("mistral", "Tell me a joke", ORIGINAL["general"], MISTRAL_TEMPLATE,
                            bos_token="<s>", eos_token="</s>")
    assert out == "<s>[INST] " + ORIGINAL["general"] + "\n\nTell me a joke [/INST]"
    assert not caplog.records  # a supported adaptation, not a failure


def test_template_gets_generation_prompt_and_system():
    out = format_messages("phi-2", CHAT, CHATML_TEMPLATE)
    assert out == ("<|im_start|>system\nYou are terse<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                   "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nName a colour<|im_end|>\n"
                   "<|im_start|>assistant\n")


def test_template_helpers():
    t = "{{ messages | tojson }}{% for m in messages %}{% if loop.first %}{% continue %}{% endif %}{% endfor %}"
    out = format_prompt("mistral", "héllo", None, t)
    assert out == '[{"role": "user", "content": "héllo"}]'
    assert format_prompt("mistral", "q", None, "{{ strftime_now('%Y') }}").isdigit()


HOSTILE = [
    "{{ cycler.__init__.__globals__.os.system('touch CANARY') }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__ }}",                                      # would render '' in a stock sandbox
    "{{ joiner.__init__.__globals__.__builtins__.open('CANARY', 'w') }}",
    "{{ lipsum.__globals__['os'].popen('touch CANARY').read() }}",
    "{{ self._TemplateReference__context }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ messages.append({'role': 'user', 'content': 'x'}) }}",  # immutable sandbox
    "{% set _ = messages[0].update({'content': 'pwned'}) %}x",
    "{{ range.__self__ }}",
    "{% for %}",                                                # does not parse
    "{{ unclosed",
    "{{ raise_exception('nope') }}",                            # raises
    "{{ 1 / 0 }}",
    "{{ messages[5]['content'] }}",
    "{% for m in messages %}{% endfor %}   ",                    # renders nothing
    "{% for i in range(100000) %}{% for j in range(100000) %}xx{% endfor %}{% endfor %}",  # runaway
]


@pytest.mark.parametrize("template", HOSTILE)
def test_hostile_or_broken_templates_fall_back_safely(template, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    template = template.replace("CANARY", str(tmp_path / "canary"))
    msgs = [{"role": "system", "content": "ctx"}, {"role": "user", "content": "q"}]
    before = [dict(m) for m in msgs]
    with caplog.at_level(logging.WARNING, logger="llmstream.prompts"):
        out1 = format_messages("mistral", msgs, template)
        out2 = format_messages("mistral", msgs, template)
    assert out1 == out2 == "[INST] ctx\n\nq [/INST]"           # the built-in format
    assert not (tmp_path / "canary").exists()                   # nothing executed
    assert msgs == before                                       # caller's messages untouched
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1                                   # logged once per template
    assert "built-in mistral prompt format" in warnings[0].getMessage()


def test_phi2_fallback_and_no_template():
    assert format_prompt("phi-2", "q", "c", "{% if %}") == "Context: c.\nInstruct: q.\nOutput:"
    assert format_prompt("phi-2", "q", "c", "") == "Context: c.\nInstruct: q.\nOutput:"
    assert format_prompt("phi-2", "q", "c", None) == "Context: c.\nInstruct: q.\nOutput:"
