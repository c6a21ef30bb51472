import random

import pytest

from llmstream.stops import StopMatcher


def run(stops, pieces):
    """Feed pieces; return (list of emits, stopped, flushed text)."""
    m = StopMatcher(stops)
    emits, stopped = [], False
    for p in pieces:
        e, stopped = m.push(p)
        emits.append(e)
        if stopped:
            break
    return emits, stopped, m.flush()


def test_no_stops_is_passthrough_without_holding():
    m = StopMatcher([])
    for piece in ["Hel", "lo", "", " wor", "ld\n"]:
        assert m.push(piece) == (piece, False)
        assert m.held == ""
    assert m.flush() == ""


def test_stop_in_one_piece():
    emits, stopped, rest = run(["###"], ["Hello ### world"])
    assert emits == ["Hello "] and stopped and rest == ""


@pytest.mark.parametrize("pieces", [
    ["Answer: 42", "<|e", "nd|> trailing"],                      # split in two
    ["Answer: 42<", "|en", "d|", ">"],                           # split in four
    ["Answer: 42<|", "end", "|>"],                               # three
])
def test_stop_split_across_pieces(pieces):
    emits, stopped, rest = run(["<|end|>"], pieces)
    assert "".join(emits) == "Answer: 42"
    assert stopped and rest == ""
    assert emits[0] == "Answer: 42"  # text before a possible stop is emitted at once


def test_holds_only_possible_prefixes_and_releases_them():
    m = StopMatcher(["</s>"])
    assert m.push("a <") == ("a ", False)
    assert m.held == "<"
    assert m.push("/") == ("", False)
    assert m.push("b") == ("</b", False)      # turned out not to be a stop
    assert m.held == ""
    assert m.push("x</") == ("x", False)
    assert m.flush() == "</"                   # end of stream releases held text
    assert m.flush() == ""


def test_overlapping_prefix():
    # "abab" inside "ababab": must stop at the first occurrence, emitting nothing
    emits, stopped, _ = run(["abab"], ["aba", "bab"])
    assert "".join(emits) == "" and stopped
    emits, stopped, _ = run(["abab"], ["xab", "a", "b", "ab"])   # "xababab"
    assert "".join(emits) == "x" and stopped
    # "aab" after "aaab": the held "aa" must slide, not be released too early
    emits, stopped, _ = run(["aab"], ["a", "a", "a", "b", "c"])
    assert "".join(emits) == "a" and stopped


def test_multiple_stops_earliest_wins():
    emits, stopped, _ = run(["STOP", "\n\n", "User:"], ["Hi there.\n", "User: hello\n\nSTOP"])
    assert "".join(emits) == "Hi there.\n" and stopped
    m = StopMatcher(["bc", "abcd"])
    assert m.push("xab") == ("x", False)      # "ab" may start "abcd" (and "b" may start "bc")
    assert m.push("c") == ("a", True)         # "bc" completes first
    assert m.matched == "bc"


def test_first_completed_stop_wins_regardless_of_splitting():
    # "c" completes before "abcd": same result whether the text comes in one piece or two
    for pieces in (["xabcd"], ["xabc", "d"], ["x", "a", "b", "c", "d"]):
        m = StopMatcher(["abcd", "c"])
        out = ""
        for p in pieces:
            e, stopped = m.push(p)
            out += e
            if stopped:
                break
        assert (out, stopped, m.matched) == ("xab", True, "c")
    # both complete at the same place: the longer one (starting first) is cut
    m = StopMatcher(["b", "ab"])
    assert m.push("xab") == ("x", True)
    assert m.matched == "ab"


def test_nothing_after_stop():
    m = StopMatcher(["END"])
    assert m.push("done END more") == ("done ", True)
    assert m.push("even more") == ("", True)
    assert m.stopped
    assert m.flush() == ""


def test_unicode():
    emits, stopped, _ = run(["→ 终"], ["naïve ✓ →", " ", "终了"])
    assert "".join(emits) == "naïve ✓ " and stopped
    emits, stopped, rest = run(["🙂🙂"], ["a🙂", "b🙂"])
    assert "".join(emits) + rest == "a🙂b🙂" and not stopped


def test_validation():
    with pytest.raises(ValueError):
        StopMatcher([""])
    with pytest.raises(TypeError):
        StopMatcher([1])
    assert StopMatcher("###").stop_strings == ("###",)
    assert StopMatcher(["a", "a"]).stop_strings == ("a",)


def reference(stops, text):
    """(full emitted text, stopped): cut before the stop string that completes first."""
    for end in range(1, len(text) + 1):
        done = [s for s in stops if text[:end].endswith(s)]
        if done:
            return text[: end - max(map(len, done))], True
    return text, False


def safe_prefix_len(stops, received):
    """How much of `received` (containing no complete stop) may be emitted."""
    for k in range(len(received), 0, -1):
        tail = received[-k:]
        if any(s.startswith(tail) and s != tail for s in stops):
            return len(received) - k
    return len(received)


def test_random_against_reference():
    rng = random.Random(1234)
    alphabet = "ab<>/ é"
    for _ in range(3000):
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5)))
                 for _ in range(rng.randint(1, 3))]
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 6))))
        pieces = [text[i:j] for i, j in zip([0] + cuts, cuts + [len(text)])]
        m = StopMatcher(stops)
        out, received, stopped = "", "", False
        for p in pieces:
            e, stopped = m.push(p)
            out += e
            received += p
            if stopped:
                break
            # minimal holding: exactly the longest possible-stop-prefix is held back
            assert len(out) == safe_prefix_len(stops, received), (stops, pieces)
        if not stopped:
            out += m.flush()
        assert (out, stopped) == reference(stops, text), (stops, pieces)


# ----------------------------------------------------------------------------- linear cost

def count_lines(fn) -> int:
    """Python lines executed inside llmstream/stops.py while fn() runs: a deterministic measure of
    the matcher's work (no timing)."""
    import sys

    from llmstream import stops
    n = 0

    def local(frame, event, arg):
        nonlocal n
        if event == "line":
            n += 1
        return local

    def tracer(frame, event, arg):
        return local if frame.f_code.co_filename == stops.__file__ else None

    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return n


def adversarial(length: int) -> list[str]:
    """Stop strings that keep a naive matcher busy on text of a's and b's: long near-matches that
    never complete (each ends in a "c")."""
    return [(unit * length)[:length - 1] + "c" for unit in ("a", "ab", "aab", "aaaab", "ba")]


def feed(stops, text, size=3):
    m = StopMatcher(stops)
    for i in range(0, len(text), size):
        m.push(text[i:i + size])
    m.flush()
    return m


TEXTS = ["a" * 6000, "ab" * 3000, "aab" * 2000, "b" * 6000, ("a" * 254 + "b") * 24]


@pytest.mark.parametrize("text", TEXTS, ids=lambda t: t[:6])
def test_matching_work_does_not_grow_with_the_stop_length(text):
    """The work per character is the same for stop strings of 16 and of 256 characters (the cap),
    and doubles with the text: each character advances each automaton in amortized O(1)."""
    from llmstream.sampling import MAX_STOP_LENGTH
    stops = adversarial(MAX_STOP_LENGTH)
    short = count_lines(lambda: feed(adversarial(16), text))
    long = count_lines(lambda: feed(stops, text))
    tables = 10 * MAX_STOP_LENGTH * len(stops)      # building the failure tables, once
    assert long < 1.1 * short + tables, (short, long)
    double = count_lines(lambda: feed(stops, text * 2))
    assert 1.8 < (double - tables) / (long - tables) < 2.2, (long, double)


def test_memory_at_the_cap_stays_small():
    """8 stop strings of 256 characters, fed near-matches for 6,000 characters: a few kilobytes
    (the old matcher kept every prefix of every stop string: ~0.5 MB here, 3 GB for 100 KB)."""
    import tracemalloc

    from llmstream.sampling import MAX_STOP_LENGTH, MAX_STOP_STRINGS
    stops = [(u * MAX_STOP_LENGTH)[:MAX_STOP_LENGTH - 1] + "c"
             for u in ("a", "ab", "aab", "aaaab", "ba", "abb", "aba", "b")][:MAX_STOP_STRINGS]
    text = ("a" * 254 + "b") * 24
    tracemalloc.start()
    try:
        feed(stops, text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64_000, peak


def test_memory_is_linear_in_the_stop_length():
    """A 20,000-character stop string (far beyond the request cap) costs kilobytes, not the
    hundreds of megabytes its set of prefixes took (100 KB took 3 GB)."""
    import tracemalloc
    stop = "a" * 19_999 + "b"
    tracemalloc.start()
    try:
        m = StopMatcher([stop])
        out = ""
        for piece in ["a" * 500] * 60 + ["b", "tail"]:     # 30,000 a's, then the stop completes
            e, stopped = m.push(piece)
            out += e
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert stopped and out == "a" * 10_001
    assert peak < 1_000_000, peak
