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
* each ``push`` costs O(len(piece) + longest stop string) per stop string: only the held-back tail
  (shorter than the longest stop string) is rescanned, never the whole history.

Matching is on Python ``str`` (code points), so multi-byte characters need no special care here;
the detokenizer must hand over whole characters.
"""
from __future__ import annotations

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
        self._max_len = max((len(s) for s in stops), default=0)
        # Every proper prefix of every stop string: the text worth holding back.
        self._prefixes = frozenset(s[:i] for s in stops for i in range(1, len(s)))
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
        buf = self._held + text_piece
        # The stop string that completes first (earliest end; on a tie the longest, i.e. the one
        # starting first). No stop string lies entirely inside the held text (it would have matched
        # on an earlier push), so searching this buffer is enough. Using the earliest *end* makes
        # the result independent of how the text is split into pieces.
        first = end = -1
        which = None
        for s in self.stop_strings:
            i = buf.find(s)
            if i != -1 and (which is None or i + len(s) < end or (i + len(s) == end and i < first)):
                first, end, which = i, i + len(s), s
        if which is not None:
            self._held = ""
            self._stopped = True
            self.matched = which
            return buf[:first], True
        # Hold back the longest suffix that is a proper prefix of some stop string; everything
        # before it can never become part of a match.
        for k in range(min(len(buf), self._max_len - 1), 0, -1):
            if buf[-k:] in self._prefixes:
                self._held = buf[-k:]
                return buf[:-k], False
        self._held = ""
        return buf, False

    def flush(self) -> str:
        """End of stream: return (and forget) the held-back text; "" once stopped."""
        held, self._held = self._held, ""
        return "" if self._stopped else held
