from collections import deque

import numpy as np
import pytest

from llmstream.errors import LLMStreamError, RequestError
from llmstream.sampling import MAX_STOP_LENGTH, MAX_STOP_STRINGS, Sampler, SamplingParams

N = 32000


def rand_logits(seed=0, n=N, scale=3.0):
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


def softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def reference_distribution(logits, recent, p: SamplingParams):
    """Straightforward (sort everything, float64) implementation of the documented pipeline."""
    x = np.asarray(logits, dtype=np.float64).copy()
    if p.repeat_penalty != 1 and p.repeat_last_n > 0 and len(recent):
        for t in set(list(recent)[-p.repeat_last_n:]):
            x[t] = x[t] / p.repeat_penalty if x[t] > 0 else x[t] * p.repeat_penalty
    if p.temperature == 0:
        return {int(np.argmax(x)): 1.0}
    order = np.lexsort((np.arange(x.size), -x))        # descending, ties -> lowest id first
    if 0 < p.top_k < x.size:
        order = order[: p.top_k]
    probs = softmax(x[order] / p.temperature)
    if p.top_p < 1:
        c = int(np.searchsorted(np.cumsum(probs), p.top_p, side="left"))
        order, probs = order[: c + 1], probs[: c + 1]
    if p.min_p > 0:
        keep = probs >= p.min_p * probs[0]
        order, probs = order[keep], probs[keep]
    probs = probs / probs.sum()
    return {int(i): float(q) for i, q in zip(order, probs)}


def as_dict(ids, probs):
    return {int(i): float(q) for i, q in zip(ids, probs)}


# ---------------------------------------------------------------------------------------- params

def test_defaults_match_original_service():
    p = SamplingParams()
    assert (p.temperature, p.top_p, p.top_k, p.min_p) == (0.1, 0.3, 0, 0.0)
    assert (p.repeat_penalty, p.repeat_last_n, p.seed, p.max_tokens, p.stop) == (1.1, 64, 299792458, 2000, ())


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(temperature=-0.1), "temperature must be >= 0"),
    (dict(temperature=float("nan")), "temperature must be a finite number"),
    (dict(temperature="hot"), "temperature must be a number"),
    (dict(temperature=True), "temperature must be a number"),
    (dict(top_p=0.0), "top_p must be in (0, 1]"),
    (dict(top_p=1.5), "top_p must be in (0, 1]"),
    (dict(top_k=-1), "top_k must be >= 0"),
    (dict(top_k=2.5), "top_k must be an integer"),
    (dict(min_p=-0.01), "min_p must be in [0, 1]"),
    (dict(min_p=1.01), "min_p must be in [0, 1]"),
    (dict(repeat_penalty=0), "repeat_penalty must be > 0"),
    (dict(repeat_penalty=-1.0), "repeat_penalty must be > 0"),
    (dict(repeat_last_n=-1), "repeat_last_n must be >= 0"),
    (dict(max_tokens=0), "max_tokens must be >= 1"),
    (dict(max_tokens=1.0), "max_tokens must be an integer"),
    (dict(seed=1.5), "seed must be an integer"),
    (dict(seed="42"), "seed must be an integer"),
    (dict(seed=-1), "seed must be in [0, 2**64)"),
    (dict(seed=2**64), "seed must be in [0, 2**64)"),
    (dict(stop=("a", "")), "stop strings must not be empty"),
    (dict(stop=("a", 3)), "stop must contain only strings"),
    (dict(stop=tuple("abcdefghi")), f"at most {MAX_STOP_STRINGS}"),
    (dict(stop=42), "stop must be a string or a list of strings"),
    (dict(stop=("ok", "x" * 257)), "at most 256 characters, but stop[1] has 257 characters"),
    (dict(stop="x" * 100_000), "at most 256 characters, but stop[0] has 100000 characters"),
    # float32 is what they are used in: no silent underflow to 0 or overflow to inf
    (dict(repeat_penalty=1e-45), "repeat_penalty = 1e-45 is too close to 0: it would be 0 in float32"),
    (dict(repeat_penalty=1e39), "repeat_penalty = 1e+39 is too large: it would overflow float32"),
    (dict(temperature=1e-39), "temperature = 1e-39 is too close to 0"),
    (dict(temperature=3.5e38), "temperature = 3.5e+38 is too large"),
    (dict(top_p=1e-40), "top_p = 1e-40 is too close to 0"),
    (dict(min_p=1e-40), "min_p = 1e-40 is too close to 0"),
    (dict(temperature=10**400), "temperature is too large"),
    (dict(top_k=2**63), "top_k must be at most 2**63 - 1"),
    (dict(max_tokens=10**5000), "max_tokens must be at most 2**63 - 1, got an integer of about 5001 digits"),
    (dict(repeat_last_n=-10**5000), "repeat_last_n must be >= 0 (0 disables the penalty), got an integer"),
])
def test_validation_errors(kwargs, fragment):
    with pytest.raises(RequestError) as exc:
        SamplingParams(**kwargs)
    assert fragment in str(exc.value)
    assert isinstance(exc.value, LLMStreamError)


def test_normalisation():
    p = SamplingParams(temperature=1, top_p=1, stop=["a", "b"], seed=np.int64(7))
    assert isinstance(p.temperature, float) and isinstance(p.top_p, float)
    assert p.stop == ("a", "b") and type(p.seed) is int
    assert SamplingParams(stop="###").stop == ("###",)
    assert len(SamplingParams(stop=tuple("abcdefgh")).stop) == MAX_STOP_STRINGS
    assert SamplingParams(stop="é" * MAX_STOP_LENGTH).stop == ("é" * MAX_STOP_LENGTH,)   # characters, not bytes
    hash(p)  # frozen and hashable


def test_from_dict():
    p = SamplingParams.from_dict({"temperature": 0.7, "top_k": 40, "stop": ["\n\n"], "seed": None})
    assert p == SamplingParams(temperature=0.7, top_k=40, stop=("\n\n",))
    assert SamplingParams.from_dict({}) == SamplingParams()
    assert SamplingParams.from_dict(None) == SamplingParams()
    base = SamplingParams(temperature=0.0, max_tokens=10)
    q = SamplingParams.from_dict({"top_p": 0.9}, base=base)
    assert (q.temperature, q.max_tokens, q.top_p) == (0.0, 10, 0.9)
    assert SamplingParams.from_dict(p.to_dict()) == p
    assert SamplingParams.from_dict({"stop": "END"}).stop == ("END",)
    assert SamplingParams.keys() == set(SamplingParams().to_dict())


@pytest.mark.parametrize("d, fragment", [
    ({"temperature": "0.5"}, "temperature must be a number"),
    ({"top_k": 4.0}, "top_k must be an integer"),
    ({"max_tokens": True}, "max_tokens must be an integer"),
    ({"stop": {"a": 1}}, "stop must be a string or a list of strings"),
    ({"stop": [1]}, "stop must contain only strings"),
    ({"temprature": 0.5}, "unknown sampling parameter 'temprature'"),
    ([("temperature", 1)], "sampling parameters must be an object"),
])
def test_from_dict_errors(d, fragment):
    with pytest.raises(RequestError) as exc:
        SamplingParams.from_dict(d)
    assert fragment in str(exc.value)


# ---------------------------------------------------------------------------------------- sampler

def test_sampler_checks_arguments():
    with pytest.raises(ValueError):
        Sampler(SamplingParams(), 0)
    s = Sampler(SamplingParams(), 10)
    with pytest.raises(ValueError, match="shape"):
        s.sample(np.zeros(11, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        s.sample(np.array([0, 1, np.nan] + [0] * 7, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        Sampler(SamplingParams(temperature=0), 3).sample(np.array([np.nan, 0, 0], np.float32))


def test_greedy_equals_argmax():
    s = Sampler(SamplingParams(temperature=0, repeat_penalty=1.0), N)
    for seed in range(20):
        logits = rand_logits(seed)
        assert s.sample(logits, [1, 2, 3]) == int(np.argmax(logits))
    assert s.greedy


def test_greedy_ties_pick_lowest_id():
    s = Sampler(SamplingParams(temperature=0), 8)
    assert s.sample(np.array([0, 5, 1, 5, 5, 0, 0, 0], np.float32)) == 1


def test_greedy_does_not_consume_randomness():
    s = Sampler(SamplingParams(temperature=0), N)
    state = s.rng.bit_generator.state
    s.sample(rand_logits(1))
    assert s.rng.bit_generator.state == state


def test_repeat_penalty_exact():
    pen = 1.5
    logits = np.array([2.0, -2.0, 3.0, 0.0, 1.0, -1.0], np.float32)
    s = Sampler(SamplingParams(temperature=0, repeat_penalty=pen, repeat_last_n=64), 6)
    x = s._prepare(logits, [0, 1, 3, 0, 0, 1])  # duplicates penalised once
    np.testing.assert_array_equal(x, np.array([2.0 / pen, -2.0 * pen, 3.0, 0.0, 1.0, -1.0], np.float32))
    np.testing.assert_array_equal(logits, [2.0, -2.0, 3.0, 0.0, 1.0, -1.0])  # caller's array untouched


def test_repeat_penalty_changes_greedy_choice_and_respects_window():
    logits = np.array([3.0, 2.5, 0.0, -1.0], np.float32)
    p = SamplingParams(temperature=0, repeat_penalty=1.5, repeat_last_n=2)
    s = Sampler(p, 4)
    assert s.sample(logits, []) == 0
    assert s.sample(logits, [0]) == 1           # 3.0/1.5 = 2.0 < 2.5
    assert s.sample(logits, [0, 2, 3]) == 0     # token 0 is outside the last 2
    assert s.sample(logits, deque([2, 0])) == 1  # non-sliceable sequences work
    assert s.sample(logits, np.array([0])) == 1
    assert s.sample(logits, [99, 0, -5]) == 1   # out-of-range ids are ignored
    assert Sampler(SamplingParams(temperature=0, repeat_penalty=1.5, repeat_last_n=0), 4).sample(logits, [0]) == 0


def test_greedy_with_penalty_matches_reference():
    p = SamplingParams(temperature=0, repeat_penalty=1.3, repeat_last_n=64)
    s = Sampler(p, N)
    rng = np.random.default_rng(5)
    for seed in range(10):
        logits = rand_logits(seed)
        recent = list(np.argsort(-logits)[:3]) + list(rng.integers(0, N, 100))
        assert s.sample(logits, recent) == next(iter(reference_distribution(logits, recent, p)))


def test_sample_does_not_modify_logits():
    logits = rand_logits(3)
    before = logits.copy()
    s = Sampler(SamplingParams(temperature=0.9, top_k=50, top_p=0.9, min_p=0.01), N)
    for _ in range(5):
        s.sample(logits, list(np.argsort(-logits)[:10]))
    np.testing.assert_array_equal(logits, before)


def test_accepts_float64_and_float16_logits():
    logits = rand_logits(4)
    s = Sampler(SamplingParams(temperature=0, repeat_penalty=1.0), N)
    assert s.sample(logits.astype(np.float64)) == int(np.argmax(logits))
    assert s.sample(logits.astype(np.float16)) == int(np.argmax(logits.astype(np.float16)))


def test_top_k_1_equals_greedy():
    greedy = Sampler(SamplingParams(temperature=0), N)
    for seed in range(10):
        logits = rand_logits(seed)
        recent = list(range(seed, seed + 30))
        s = Sampler(SamplingParams(temperature=1.5, top_p=1.0, top_k=1, seed=seed), N)
        assert s.sample(logits, recent) == greedy.sample(logits, recent)


def test_top_k_keeps_exactly_k_and_breaks_ties_low():
    logits = np.array([1, 4, 4, 4, 0, 4, 2], np.float32)
    s = Sampler(SamplingParams(temperature=1.0, top_p=1.0, top_k=2, repeat_penalty=1.0), 7)
    ids, probs = s.distribution(logits)
    assert ids.tolist() == [1, 2]
    np.testing.assert_allclose(probs, [0.5, 0.5])


def test_tiny_top_p_keeps_only_argmax():
    for seed in range(10):
        logits = rand_logits(seed)
        s = Sampler(SamplingParams(temperature=1.0, top_p=1e-6, seed=seed), N)
        ids, probs = s.distribution(logits)
        assert ids.tolist() == [int(np.argmax(logits))]
        assert all(s.sample(logits) == int(np.argmax(logits)) for _ in range(20))


def test_top_p_is_smallest_set_reaching_mass():
    # probabilities 0.5, 0.25, 0.125, ... make the cut unambiguous
    logits = np.log(np.array([0.5, 0.25, 0.125, 0.0625, 0.0625], np.float64)).astype(np.float32)
    for top_p, expect in [(0.5, [0]), (0.6, [0, 1]), (0.75, [0, 1]), (0.8, [0, 1, 2]), (0.99, [0, 1, 2, 3, 4])]:
        s = Sampler(SamplingParams(temperature=1.0, top_p=top_p, repeat_penalty=1.0), 5)
        ids, _ = s.distribution(logits)
        assert ids.tolist() == expect, top_p


def test_min_p():
    logits = np.log(np.array([0.4, 0.3, 0.15, 0.1, 0.05], np.float64)).astype(np.float32)
    s = Sampler(SamplingParams(temperature=1.0, top_p=1.0, min_p=0.3, repeat_penalty=1.0), 5)
    ids, probs = s.distribution(logits)
    assert ids.tolist() == [0, 1, 2]                 # 0.1 < 0.3 * 0.4 <= 0.15
    np.testing.assert_allclose(probs, np.array([0.4, 0.3, 0.15]) / 0.85, rtol=1e-5)
    draws = {s.sample(logits) for _ in range(300)}
    assert draws == {0, 1, 2}
    # min_p = 1 keeps only the most probable token
    s1 = Sampler(SamplingParams(temperature=1.0, top_p=1.0, min_p=1.0), 5)
    assert s1.distribution(logits)[0].tolist() == [0]


def test_min_p_after_top_p():
    logits = np.log(np.array([0.4, 0.3, 0.15, 0.1, 0.05], np.float64)).astype(np.float32)
    # top_p keeps {0,1,2}; min_p=0.5 then drops 2 (0.15 < 0.2)
    s = Sampler(SamplingParams(temperature=1.0, top_p=0.8, min_p=0.5, repeat_penalty=1.0), 5)
    assert s.distribution(logits)[0].tolist() == [0, 1]
    # min_p set {0,1,2,3} is larger than the nucleus {0,1}
    s = Sampler(SamplingParams(temperature=1.0, top_p=0.6, min_p=0.2, repeat_penalty=1.0), 5)
    assert s.distribution(logits)[0].tolist() == [0, 1]


def test_temperature_applies_before_top_p():
    # at T=1 p = (0.5, 0.3, 0.2): top_p 0.6 keeps two tokens; at T=0.25 the first has > 0.6 alone
    logits = np.log(np.array([0.5, 0.3, 0.2])).astype(np.float32)
    hot = Sampler(SamplingParams(temperature=1.0, top_p=0.6, repeat_penalty=1.0), 3)
    cold = Sampler(SamplingParams(temperature=0.25, top_p=0.6, repeat_penalty=1.0), 3)
    assert hot.distribution(logits)[0].tolist() == [0, 1]
    assert cold.distribution(logits)[0].tolist() == [0]


CASES = [
    dict(temperature=1.0, top_p=1.0),
    dict(temperature=0.1, top_p=0.3),                       # the defaults
    dict(temperature=0.8, top_p=0.95),
    dict(temperature=1.0, top_p=0.9),
    dict(temperature=1.5, top_p=0.99),                      # broad: bisection path
    dict(temperature=3.0, top_p=0.999),
    dict(temperature=1.0, top_p=0.999999),
    dict(temperature=0.7, top_k=40, top_p=0.9),
    dict(temperature=1.0, top_k=1000, top_p=1.0),
    dict(temperature=1.0, top_p=1.0, min_p=0.05),
    dict(temperature=1.0, top_p=0.9, min_p=0.05),
    dict(temperature=2.0, top_p=0.95, min_p=0.001),
    dict(temperature=1.2, top_k=500, top_p=0.8, min_p=0.01),
    dict(temperature=0.5, repeat_penalty=1.3, top_p=0.97),
]


@pytest.mark.parametrize("kw", CASES, ids=[str(c) for c in CASES])
@pytest.mark.parametrize("n", [50, 32000, 51200])
def test_distribution_matches_reference(kw, n):
    rng = np.random.default_rng(n)
    for seed in range(3):
        logits = rand_logits(seed, n=n, scale=2.5)
        logits[rng.integers(0, n, 5)] += 6
        recent = list(rng.integers(0, n, 80))
        p = SamplingParams(**kw)
        ids, probs = Sampler(p, n).distribution(logits, recent)
        assert np.all(np.diff(ids) > 0)
        assert probs.sum() == pytest.approx(1.0)
        ref = reference_distribution(logits, recent, p)
        got = as_dict(ids, probs)
        assert got.keys() == ref.keys()
        np.testing.assert_allclose([got[k] for k in ref], list(ref.values()), rtol=1e-4, atol=1e-9)


def test_flat_distribution_ties_keep_lowest_ids():
    n = 32000
    logits = np.zeros(n, np.float32)
    s = Sampler(SamplingParams(temperature=1.0, top_p=0.25, repeat_penalty=1.0), n)
    ids, probs = s.distribution(logits)
    assert ids.tolist() == list(range(8000))
    np.testing.assert_allclose(probs, 1 / 8000)


def test_masked_logits():
    logits = np.full(100, -np.inf, np.float32)
    logits[[7, 42]] = [1.0, 2.0]
    s = Sampler(SamplingParams(temperature=1.0, top_p=1.0, top_k=10), 100)
    assert {s.sample(logits) for _ in range(200)} == {7, 42}
    with pytest.raises(ValueError):
        s.sample(np.full(100, -np.inf, np.float32))


def test_same_seed_reproduces_different_seeds_differ():
    logits_seq = [rand_logits(i, scale=2.0) for i in range(50)]

    def run(seed):
        s = Sampler(SamplingParams(temperature=1.0, top_p=0.95, seed=seed), N)
        out = []
        for logits in logits_seq:
            out.append(s.sample(logits, out))
        return out

    a, b, c = run(1234), run(1234), run(4321)
    assert a == b
    assert a != c
    assert len(set(a)) > 10  # actually random, not stuck on one token


def test_empirical_distribution_matches_softmax():
    logits = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0, 0.25, 1.25], np.float32)
    expected = softmax(logits)
    s = Sampler(SamplingParams(temperature=1.0, top_p=1.0, top_k=0, min_p=0.0,
                               repeat_penalty=1.0, seed=7), len(logits))
    draws = 20000
    counts = np.bincount([s.sample(logits) for _ in range(draws)], minlength=len(logits))
    chi2 = float((((counts - draws * expected) ** 2) / (draws * expected)).sum())
    assert chi2 < 27.88  # chi-square, 9 degrees of freedom, p = 0.001


def test_empirical_distribution_large_vocab_blocked_draw():
    # exercises the two-level (block) draw: aggregate 8192 tokens into 16 groups of 512
    n = 8192
    logits = rand_logits(11, n=n, scale=1.0)
    expected = softmax(logits).reshape(16, -1).sum(axis=1)
    s = Sampler(SamplingParams(temperature=1.0, top_p=1.0, repeat_penalty=1.0, seed=3), n)
    draws = 20000
    counts = np.bincount([s.sample(logits) // 512 for _ in range(draws)], minlength=16)
    chi2 = float((((counts - draws * expected) ** 2) / (draws * expected)).sum())
    assert chi2 < 37.70  # chi-square, 15 degrees of freedom, p = 0.001


def test_empirical_distribution_with_temperature_and_truncation():
    logits = np.log(np.array([0.4, 0.3, 0.15, 0.1, 0.05])).astype(np.float32)
    p = SamplingParams(temperature=0.7, top_p=0.9, repeat_penalty=1.0, seed=9)
    s = Sampler(p, 5)
    ref = reference_distribution(logits, [], p)
    draws = 20000
    counts = np.bincount([s.sample(logits) for _ in range(draws)], minlength=5)
    assert set(np.flatnonzero(counts)) == set(ref)
    exp = np.array([ref[k] for k in sorted(ref)]) * draws
    chi2 = float((((counts[sorted(ref)] - exp) ** 2) / exp).sum())
    assert chi2 < 16.27  # chi-square, 3 degrees of freedom, p = 0.001


@pytest.mark.parametrize("kw", CASES, ids=[str(c) for c in CASES])
def test_distribution_matches_reference_with_forced_bisection(kw, monkeypatch):
    # a tiny sort budget forces the band bisection on every truncation
    from llmstream import sampling
    monkeypatch.setattr(sampling, "_BAND_SORT_MAX", 3)
    n = 4096
    rng = np.random.default_rng(1)
    for seed in range(3):
        logits = rand_logits(seed, n=n, scale=2.0)
        logits[rng.integers(0, n, 40)] = logits.max()         # many exact ties
        p = SamplingParams(**kw)
        ids, probs = Sampler(p, n).distribution(logits, [])
        ref = reference_distribution(logits, [], p)
        got = as_dict(ids, probs)
        assert got.keys() == ref.keys()
        np.testing.assert_allclose([got[k] for k in ref], list(ref.values()), rtol=1e-4, atol=1e-9)


def test_an_extreme_but_valid_repeat_penalty_keeps_logits_finite():
    """The smallest and largest penalties float32 holds: a penalised logit saturates at the float32
    range instead of becoming inf (which the sampler would refuse as a broken model)."""
    logits = np.array([100.0, -100.0, 1.0, 0.5], dtype=np.float32)
    for pen in (1.2e-38, 3.4e38):
        s = Sampler(SamplingParams(repeat_penalty=pen, temperature=1.0, top_p=1.0), 4)
        ids, probs = s.distribution(logits, recent=[0, 1])
        assert np.isfinite(probs).all() and abs(probs.sum() - 1) < 1e-9
        s.sample(logits, recent=[0, 1])
