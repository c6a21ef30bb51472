"""Incremental stop-string matching for streamed text.

A generator decodes one token at a time into text pieces and feeds them to :class:`StopMatcher`:

    m = StopMatcher(params.stop)
    for piece in pieces:
        emit, stopped = m.push(piece)
        send(emit)
        if stopped:
            break
    else:
        send(m.flush())          # end of generation without a stop string: release held text

Guarantees:

* a stop string is never emitted, even when it arrives split across several pieces;
* the stream stops at the stop string that *completes* first (the model stops generating there);
  the text before it is emitted, after ``stopped`` nothing else is. So the outcome does not depend
  on how the text is split into pieces;
* text is held back only while it could still be the beginning of a stop string (with no stop
  strings every piece passes straight through);
* time and memory are linear: each stop string keeps a Knuth-Morris-Pratt automaton (its failure
  table, one integer per character) and its current state (how many of its first characters the
  text ends with), so a ``push`` costs O(len(piece)) amortized per stop string plus one copy of the
  held text (shorter than the longest stop string), and the matcher holds O(total length of the
  stop strings), whatever the text. (Requests cap stop strings at
  ``sampling.MAX_STOP_STRINGS`` of ``sampling.MAX_STOP_LENGTH`` characters.)

Matching is on Python ``str`` (code points), so multi-byte characters need no special care here;
the detokenizer must hand over whole characters.
"""
from __future__ import annotations

from array import array
from typing import Iterable

__all__ = ["StopMatcher"]


class StopMatcher:
    """Hold back streamed text that may begin a stop string; stop where a stop string first completes."""

    def __init__(self, stop_strings: Iterable[str] = ()):
        if isinstance(stop_strings, str):
            stop_strings = (stop_strings,)
        stops = tuple(dict.fromkeys(stop_strings))  # de-duplicated, order kept
        for s in stops:
            if not isinstance(s, str):
                raise TypeError(f"stop strings must be str, got {type(s).__name__}")
            if not s:
                raise ValueError("stop strings must not be empty")
        self.stop_strings: tuple[str, ...] = stops
        self._fail = [_failure(s) for s in stops]
        # per stop string: the length of the longest prefix of it that the text received ends with
        self._state = [0] * len(stops)
        self._held = ""
        self._stopped = False
        self.matched: str | None = None   # the stop string that ended the stream, if any

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def held(self) -> str:
        """Text received but not yet emitted (a possible beginning of a stop string)."""
        return self._held

    def push(self, text_piece: str) -> tuple[str, bool]:
        """Add the next piece of text; return ``(text safe to emit now, stopped)``."""
        if self._stopped:
            return "", True
        if not self.stop_strings:
            return text_piece, False
        if not text_piece:
            return "", False
        # Advance every automaton over the piece. The stop string that completes first wins
        # (earliest end; on a tie the longest, i.e. the one starting first), so the result does not
        # depend on how the text is split into pieces; once one completes at index `last`, the
        # others need only be run up to there.
        last, which = len(text_piece) - 1, None
        new_states = []
        for s, fail, k in zip(self.stop_strings, self._fail, self._state):
            if k == 0 and s[0] not in text_piece:   # from the start state only s[0] moves
                new_states.append(0)
                continue
            n = len(s)
            for i, c in enumerate(text_piece):
                if i > last:
                    break
                while k and s[k] != c:
                    k = fail[k - 1]
                if s[k] == c:
                    k += 1
                    if k == n:
                        if which is None or i < last or len(s) > len(which):
                            last, which = i, s
                        break
            new_states.append(k)
        buf = self._held + text_piece
        if which is not None:
            # it ends at buf[len(held) + last]; it starts inside the held text at the earliest
            end = len(self._held) + last + 1
            self._held = ""
            self._stopped = True
            self.matched = which
            return buf[:end - len(which)], True
        self._state = new_states
        # Hold back the longest suffix that is a proper prefix of some stop string (the largest
        # state); everything before it can never become part of a match.
        keep = max(new_states)
        if keep:
            self._held = buf[-keep:]
            return buf[:-keep], False
        self._held = ""
        return buf, False

    def flush(self) -> str:
        """End of stream: return (and forget) the held-back text; "" once stopped."""
        held, self._held = self._held, ""
        self._state = [0] * len(self.stop_strings)
        return "" if self._stopped else held


def _failure(s: str) -> array:
    """Knuth-Morris-Pratt failure table: f[i] = the length of the longest proper prefix of s[:i+1]
    that is also its suffix. O(len(s)) time and memory."""
    f = array("l", [0]) * len(s)
    k = 0
    for i in range(1, len(s)):
        c = s[i]
        while k and s[k] != c:
            k = f[k - 1]
        if s[k] == c:
            k += 1
        f[i] = k
    return f
