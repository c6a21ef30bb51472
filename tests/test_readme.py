"""The README tells the truth: every error message it quotes (Troubleshooting: **`message`**) is a
message the program can print. Placeholders in a quote (`...`, N, M, host:port) stand for values;
the literal parts between them must appear in the source."""
import re

from conftest import ROOT

PLACEHOLDER = re.compile(r"\.\.\.|\b[NM]\b|\d+\.\d+\.\d+\.\d+:\d+")


def _quoted_messages() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Troubleshooting", 1)[1]
    return re.findall(r"\*\*`([^`]+)`\*\*", section)


def test_every_error_message_quoted_in_the_readme_exists_in_the_code():
    quotes = _quoted_messages()
    assert len(quotes) >= 5
    source = "\n".join(p.read_text() for p in (ROOT / "llmstream").rglob("*.py"))
    source = " ".join(source.split())
    for quote in quotes:
        parts = [p.strip() for p in PLACEHOLDER.split(quote) if len(p.strip()) >= 4]
        assert parts, quote
        for part in parts:
            # a message may be split over several string literals: allow '" "' between words
            words = [re.escape(w) for w in part.split()]
            pattern = r"""(?:\s|"\s*f?"|'\s*f?')+""".join(words)
            assert re.search(pattern, source), f"README quotes {quote!r}, the code never says {part!r}"


def test_every_environment_variable_the_code_reads_is_documented():
    """Each LLMSTREAM_* variable read by the Python package or the C core appears in the README."""
    files = list((ROOT / "llmstream").rglob("*.py")) + list((ROOT / "csrc").glob("*.c"))
    read = set()
    for p in files:
        read |= set(re.findall(r"""(?:environ(?:\.get)?\(|environ\[|getenv\()\s*["'](LLMSTREAM_[A-Z0-9_]+)""",
                               p.read_text()))
    assert {"LLMSTREAM_SIMD", "LLMSTREAM_AVX512", "LLMSTREAM_REPACK"} <= read
    readme = (ROOT / "README.md").read_text()
    assert not [v for v in sorted(read) if v not in readme]
