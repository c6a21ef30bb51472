"""Token sampling: validated sampling parameters and a seeded, vectorised sampler.

Pipeline applied by :meth:`Sampler.sample` to one step's logits (the caller's array is never modified):

1. **Repeat penalty** (llama.cpp semantics): for each *distinct* token id among the last
   ``repeat_last_n`` entries of ``recent``, a logit ``> 0`` is divided by ``repeat_penalty`` and any
   other logit is multiplied by it. ``repeat_penalty == 1`` or ``repeat_last_n == 0`` disables it.
2. ``temperature == 0`` -> **greedy** (also when 1/temperature overflows float32): exactly
   ``np.argmax`` of the penalised logits (ties -> lowest id). Nothing below runs and the random
   generator is not advanced.
3. **top-k** (``top_k > 0``): keep the ``top_k`` highest logits (ties at the boundary -> lowest ids).
4. **softmax with temperature** over the remaining tokens: ``p = softmax(logits / temperature)``.
5. **top-p** (nucleus, ``top_p < 1``): keep the smallest set of most probable tokens whose cumulative
   probability (of the step-4 distribution) is ``>= top_p``; at least one token survives. Ties at
   the cut -> lowest ids.
6. **min-p** (``min_p > 0``): drop tokens with ``p < min_p * p_max`` (p_max = the most probable token,
   which always survives).
7. **renormalise and draw** one token with the sampler's ``numpy.random.Generator`` (PCG64 seeded with
   ``seed``). Every non-greedy step consumes exactly one uniform number, so the same seed and the same
   sequence of logits always give the same tokens.

Order note: temperature comes *before* top-p/min-p, as in candle's ``LogitsProcessor`` (the original
service's defaults, seed 299792458 included, are candle's example defaults). llama.cpp's default chain
is ``penalties -> top_k -> top_p -> min_p -> temperature -> dist``, i.e. it applies top-p/min-p to the
temperature-1 distribution. Greedy results and the tokens kept by top-k are the same in both orders;
top-p and min-p keep fewer tokens here when ``temperature < 1`` and more when ``> 1``.

Performance: no Python loop touches the vocabulary. The nucleus is bracketed by probability
thresholds and narrowed by bisection, so only a small band of candidates around the cut is sorted
and the draw uses block sums instead of a full cumulative sum; typical settings cost ~0.1-0.3 ms for
32000 logits (``scripts/time_sampler.py``). The worst case is a cut among thousands of exactly equal
weights, where that whole band is sorted.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import RequestError

__all__ = ["SamplingParams", "Sampler", "MAX_STOP_STRINGS", "MAX_STOP_LENGTH", "MAX_SEED"]

#: most stop strings one request may carry
MAX_STOP_STRINGS = 8
#: most characters (code points) in one stop string
MAX_STOP_LENGTH = 256
#: seeds must lie in ``[0, MAX_SEED]``
MAX_SEED = 2**64 - 1
#: the other integer parameters must fit in int64
MAX_INT = 2**63 - 1
#: the float parameters are used in float32: a non-zero magnitude must lie in [F32_TINY, F32_MAX]
F32_TINY = float(np.finfo(np.float32).tiny)   # smallest normal float32, ~1.18e-38
F32_MAX = float(np.finfo(np.float32).max)     # ~3.40e38


def _show(v: int) -> str:
    """An integer for a message: in full unless it is huge (str() of a huge int is slow or refused)."""
    if abs(v) < 10**30:
        return str(v)
    return f"an integer of about {int(abs(v).bit_length() * 0.30103) + 1} digits"


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings of one generation; defaults are those of the original service.

    Constructing an instance validates it (``RequestError`` with a readable message on a bad value).
    ``stop`` also accepts a single string or a list, normalised to a tuple; numbers are normalised to
    ``float``/``int``.
    """

    temperature: float = 0.1      # 0 = greedy
    top_p: float = 0.3            # in (0, 1]; 1 = off
    top_k: int = 0                # >= 0; 0 = off
    min_p: float = 0.0            # in [0, 1]; 0 = off
    repeat_penalty: float = 1.1   # > 0; 1 = off
    repeat_last_n: int = 64       # >= 0; 0 = off
    seed: int = 299792458         # in [0, 2**64)
    max_tokens: int = 2000        # >= 1
    stop: tuple[str, ...] = ()    # at most MAX_STOP_STRINGS non-empty strings of <= MAX_STOP_LENGTH

    def __post_init__(self) -> None:
        # Normalise representation first (frozen: go through object.__setattr__), then validate.
        for name in ("temperature", "top_p", "min_p", "repeat_penalty"):
            v = getattr(self, name)
            if _is_number(v):
                try:
                    object.__setattr__(self, name, float(v))
                except OverflowError:
                    raise RequestError(f"{name} is too large: {_show(int(v))}") from None
        for name in ("top_k", "repeat_last_n", "seed", "max_tokens"):
            v = getattr(self, name)
            if _is_int(v):
                object.__setattr__(self, name, int(v))
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif isinstance(self.stop, list):
            object.__setattr__(self, "stop", tuple(self.stop))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise :class:`RequestError` naming the first invalid field."""
        for name in ("temperature", "top_p", "min_p", "repeat_penalty"):
            v = getattr(self, name)
            if not _is_number(v):
                raise RequestError(f"{name} must be a number, got {type(v).__name__}")
            if not math.isfinite(v):
                raise RequestError(f"{name} must be a finite number, got {v}")
            if v != 0 and abs(v) < F32_TINY:
                raise RequestError(f"{name} = {v:g} is too close to 0: it would be 0 in float32, "
                                   f"the precision it is used in (a non-zero value needs a "
                                   f"magnitude of at least {F32_TINY:.3g})")
            if abs(v) > F32_MAX:
                raise RequestError(f"{name} = {v:g} is too large: it would overflow float32, the "
                                   f"precision it is used in (at most {F32_MAX:.3g})")
        for name in ("top_k", "repeat_last_n", "seed", "max_tokens"):
            v = getattr(self, name)
            if not _is_int(v):
                raise RequestError(f"{name} must be an integer, got {type(v).__name__}")
            if name != "seed" and v > MAX_INT:
                raise RequestError(f"{name} must be at most 2**63 - 1, got {_show(v)}")
        if self.temperature < 0:
            raise RequestError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise RequestError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p}")
        if self.top_k < 0:
            raise RequestError(f"top_k must be >= 0 (0 disables it), got {_show(self.top_k)}")
        if not 0 <= self.min_p <= 1:
            raise RequestError(f"min_p must be in [0, 1] (0 disables it), got {self.min_p}")
        if self.repeat_penalty <= 0:
            raise RequestError(f"repeat_penalty must be > 0 (1 disables it), got {self.repeat_penalty}")
        if self.repeat_last_n < 0:
            raise RequestError(f"repeat_last_n must be >= 0 (0 disables the penalty), got {_show(self.repeat_last_n)}")
        if not 0 <= self.seed <= MAX_SEED:
            raise RequestError(f"seed must be in [0, 2**64), got {_show(self.seed)}")
        if self.max_tokens < 1:
            raise RequestError(f"max_tokens must be >= 1, got {_show(self.max_tokens)}")
        if not isinstance(self.stop, tuple):
            raise RequestError(f"stop must be a string or a list of strings, got {type(self.stop).__name__}")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise RequestError(f"stop accepts at most {MAX_STOP_STRINGS} strings of at most "
                               f"{MAX_STOP_LENGTH} characters, got {len(self.stop)} strings")
        for i, s in enumerate(self.stop):
            if not isinstance(s, str):
                raise RequestError(f"stop must contain only strings, got {type(s).__name__}")
            if not s:
                raise RequestError("stop strings must not be empty")
            if len(s) > MAX_STOP_LENGTH:
                raise RequestError(f"stop accepts at most {MAX_STOP_STRINGS} strings of at most "
                                   f"{MAX_STOP_LENGTH} characters, but stop[{i}] has {len(s)} "
                                   "characters")

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def keys(cls) -> frozenset[str]:
        """Names accepted by :meth:`from_dict` (the dataclass fields)."""
        return frozenset(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, base: "SamplingParams | None" = None) -> "SamplingParams":
        """Build params from a JSON-like mapping, starting from ``base`` (default: the defaults).

        Only the keys in :meth:`keys` are accepted; any other key raises :class:`RequestError`, so the
        caller picks the sampling keys out of a larger request body. A value of ``None`` (JSON null)
        means "not given" and keeps the base value. ``stop`` may be a string or a list of strings.
        """
        base = base if base is not None else cls()
        if d is None:
            return base
        if not isinstance(d, Mapping):
            raise RequestError(f"sampling parameters must be an object, got {type(d).__name__}")
        known = cls.keys()
        updates: dict[str, Any] = {}
        for key, value in d.items():
            if key not in known:
                raise RequestError(
                    f"unknown sampling parameter {key!r} (known: {', '.join(sorted(known))})")
            if value is None:
                continue
            if key == "stop" and not isinstance(value, (str, list, tuple)):
                raise RequestError(f"stop must be a string or a list of strings, got {type(value).__name__}")
            updates[key] = value
        return replace(base, **updates)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``stop`` as a list); ``from_dict(p.to_dict()) == p``."""
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


class Sampler:
    """Draws token ids from logits according to :class:`SamplingParams` (see the module docstring).

    One sampler belongs to one generation: it owns a ``numpy.random.Generator(PCG64(params.seed))``.
    Not thread-safe (the generator has state); create one per request.
    """

    def __init__(self, params: SamplingParams, n_vocab: int):
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
        params.validate()
        if not _is_int(n_vocab) or n_vocab < 1:
            raise ValueError(f"n_vocab must be a positive integer, got {n_vocab!r}")
        self.params = params
        self.n_vocab = int(n_vocab)
        self.rng = np.random.Generator(np.random.PCG64(params.seed))
        # 1/temperature as float32; a temperature so small that this overflows is treated as greedy.
        t = params.temperature
        self._inv_temp = np.float32(np.inf) if t == 0 or 1.0 / t > 3.0e38 else np.float32(1.0 / t)

    # ------------------------------------------------------------------ public
    def sample(self, logits: np.ndarray, recent: Sequence[int] = ()) -> int:
        """Return the next token id for ``logits`` (shape ``(n_vocab,)``) given the ``recent`` ids.

        ``recent`` is the token history (prompt and/or generated ids, oldest first); only its last
        ``repeat_last_n`` entries matter. ``logits`` is not modified.
        """
        x = self._prepare(logits, recent)
        if self.greedy:
            return _argmax(x)
        ids, w = self._candidates(x)
        j = _draw(w, self.rng.random())       # exactly one uniform number per non-greedy step
        return int(j if ids is None else ids[j])

    def distribution(self, logits: np.ndarray, recent: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """The distribution :meth:`sample` draws from: ``(ids, probs)``, ids ascending (int64),
        probabilities (float64) summing to 1. Does not advance the random generator."""
        x = self._prepare(logits, recent)
        if self.greedy:
            return np.array([_argmax(x)], dtype=np.int64), np.ones(1)
        ids, w = self._candidates(x)
        if ids is None:
            ids = np.arange(self.n_vocab)
        probs = w.astype(np.float64)
        probs /= probs.sum()
        return ids.astype(np.int64), probs

    @property
    def greedy(self) -> bool:
        """True when sampling is deterministic argmax (temperature 0)."""
        return bool(self._inv_temp == np.inf)

    # ------------------------------------------------------------------ stages
    def _prepare(self, logits: np.ndarray, recent: Sequence[int]) -> np.ndarray:
        x = np.asarray(logits)
        if x.shape != (self.n_vocab,):
            raise ValueError(f"logits must have shape ({self.n_vocab},), got {x.shape}")
        if x.dtype != np.float32:
            x = x.astype(np.float32)  # a copy: the caller's array is untouched either way
        return self._penalise(x, recent)

    def _candidates(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """Token ids (ascending; None = all) and their unnormalised weights after top-k/p, min-p."""
        m = float(x.max())                    # also the maximum of any top-k subset
        if not math.isfinite(m):
            raise ValueError("logits contain NaN or +inf, or are all -inf")
        ids = self._top_k(x)                  # None = every token is still a candidate
        xs = x if ids is None else x[ids]
        # Unnormalised probabilities, max exactly 1 (exp(0)); float32 exp is fast and precise enough.
        w = np.exp((xs - np.float32(m)) * self._inv_temp)
        keep = self._truncate(w)              # local indices into w (ascending) or None = all
        if keep is not None:
            w = w[keep]
            ids = keep if ids is None else ids[keep]
        return ids, w

    def _penalise(self, x: np.ndarray, recent: Sequence[int]) -> np.ndarray:
        p = self.params
        n = p.repeat_last_n
        if p.repeat_penalty == 1.0 or n == 0 or len(recent) == 0:
            return x
        try:
            window = recent[-n:]
        except TypeError:  # e.g. a deque: not sliceable
            window = list(recent)[-n:]
        ids = np.unique(np.asarray(window, dtype=np.int64))
        ids = ids[(ids >= 0) & (ids < self.n_vocab)]
        if ids.size == 0:
            return x
        x = x.copy()
        vals = x[ids]
        pen = np.float32(p.repeat_penalty)
        with np.errstate(over="ignore", under="ignore"):
            new = np.where(vals > 0, vals / pen, vals * pen)
        # an extreme penalty must not turn a finite logit into +-inf (NaN/inf from the model stay)
        x[ids] = np.where(np.isfinite(vals), np.clip(new, -_F32, _F32), vals)
        return x

    def _top_k(self, x: np.ndarray) -> np.ndarray | None:
        k = self.params.top_k
        n = x.shape[0]
        if k == 0 or k >= n:
            return None
        kth = np.partition(x, n - k)[n - k]   # k-th largest value
        return _take_ties_lowest(x, kth, k)

    def _truncate(self, w: np.ndarray) -> np.ndarray | None:
        """Apply top-p then min-p to weights ``w`` (max 1); return kept local indices or None (= all)."""
        p = self.params
        if p.top_p >= 1.0:
            return np.flatnonzero(w >= np.float32(p.min_p)) if p.min_p > 0 else None
        target = p.top_p * float(w.sum(dtype=np.float64))
        return _nucleus(w, target, p.min_p)


_F32 = np.float32(F32_MAX)

# Thresholds (relative to the most probable token, whose weight is 1) tried in turn to find a small
# candidate set {w >= t} that already holds the top_p mass and therefore contains the whole nucleus.
_NUCLEUS_LADDER = (1e-1, 1e-3, 1e-6, 1e-12)
# Candidate bands at most this large are sorted directly; larger ones are narrowed by bisection first.
_BAND_SORT_MAX = 2048
# Above this many candidates, the draw locates its block from block sums instead of a full cumsum.
_DRAW_BLOCK = 256


def _mass(w: np.ndarray, t: float) -> float:
    return float(w[w >= np.float32(t)].sum(dtype=np.float64))


def _nucleus(w: np.ndarray, target: float, floor: float) -> np.ndarray:
    """Ascending indices of the nucleus of ``w`` intersected with the min-p set ``{w >= floor}``.

    The nucleus is the smallest set of largest weights whose sum is ``>= target`` (at least one
    element; ties at the cut -> lowest indices). Both sets are prefixes of ``w`` sorted by weight, so
    the result is the shorter one. Only a narrow band of weights around the cut is ever sorted.
    """
    # 1. Bracket the cut: mass{w >= hi} < target <= mass{w >= lo}. Every weight is <= 1 < 2.
    hi, mass_hi, lo = 2.0, 0.0, None
    for t in [t for t in _NUCLEUS_LADDER if t > floor] + [floor]:
        m = _mass(w, t) if t > 0 else math.inf
        if m >= target:
            lo = t
            break
        if t == floor:       # even the whole min-p set lacks top_p mass: it is the smaller result
            return np.flatnonzero(w >= np.float32(floor))
        hi, mass_hi = t, m
    assert lo is not None
    f_lo, f_hi = np.float32(lo), np.float32(hi)
    band = w[(w >= f_lo) & (w < f_hi)]
    n_above = int(np.count_nonzero(w >= f_hi))
    # 2. Narrow the band [lo, hi) by geometric bisection (on the band only) until it is small.
    for _ in range(64):
        if band.size <= _BAND_SORT_MAX:
            break
        mid = math.sqrt(hi * lo) if lo > 0 else hi * 1e-6
        f_mid = np.float32(mid)
        if not f_lo < f_mid < f_hi:
            break                            # the band is (nearly) all ties: just sort it
        upper = band >= f_mid
        m_up = float(band[upper].sum(dtype=np.float64))
        if mass_hi + m_up >= target:
            lo, f_lo, band = mid, f_mid, band[upper]
        else:
            hi, f_hi, mass_hi = mid, f_mid, mass_hi + m_up
            n_above += int(np.count_nonzero(upper))
            band = band[~upper]
    if band.size == 0:                       # only reachable through rounding of the masses
        return np.flatnonzero(w >= f_lo)
    # 3. Sort the band (descending) and find where the cumulative mass reaches the target.
    srt = np.sort(band)[::-1]
    cs = np.cumsum(srt, dtype=np.float64)
    c = min(int(np.searchsorted(cs, target - mass_hi, side="left")), srt.size - 1)
    return _take_ties_lowest(w, srt[c], n_above + c + 1)


def _draw(w: np.ndarray, r: float) -> int:
    """Index drawn with probability ``w[i] / w.sum()`` from the uniform number ``r`` in [0, 1)."""
    n = w.size
    if n <= 4 * _DRAW_BLOCK:
        cdf = np.cumsum(w, dtype=np.float64)
        j = min(int(np.searchsorted(cdf, r * cdf[-1], side="right")), n - 1)
        return j if w[j] > 0 else int(np.flatnonzero(w)[-1])   # rounding at the very top
    # Two levels: block sums locate the block, a cumsum inside it the element.
    nb = -(-n // _DRAW_BLOCK)
    sums = np.empty(nb, dtype=np.float64)
    full = n // _DRAW_BLOCK
    sums[:full] = w[: full * _DRAW_BLOCK].reshape(full, _DRAW_BLOCK).sum(axis=1, dtype=np.float64)
    if full < nb:
        sums[full] = w[full * _DRAW_BLOCK:].sum(dtype=np.float64)
    cb = np.cumsum(sums)
    u = r * cb[-1]
    blk = min(int(np.searchsorted(cb, u, side="right")), nb - 1)
    if sums[blk] <= 0:                       # rounding at the very top: last block with mass
        blk = int(np.flatnonzero(sums > 0)[-1])
    lo = blk * _DRAW_BLOCK
    return lo + _draw(w[lo: lo + _DRAW_BLOCK], min(max((u - (cb[blk - 1] if blk else 0.0)) / sums[blk], 0.0), np.nextafter(1.0, 0.0)))


def _argmax(x: np.ndarray) -> int:
    tok = int(np.argmax(x))
    if np.isnan(x[tok]):
        raise ValueError("logits contain NaN")
    return tok


def _take_ties_lowest(v: np.ndarray, cut: np.float32, count: int) -> np.ndarray:
    """Ascending indices of the ``count`` largest entries of ``v`` whose ``count``-th largest value is
    ``cut``: every entry ``> cut`` plus the lowest-index entries ``== cut`` to make up ``count``."""
    mask = v > cut
    need = count - int(np.count_nonzero(mask))
    if need > 0:
        mask[np.flatnonzero(v == cut)[:need]] = True
    return np.flatnonzero(mask)
