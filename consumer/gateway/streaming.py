"""What a stream may show while a job's seats are still answering.

Every seat streams its own tokens; the verified answer is known only when the signed results are
compared. A stream cannot take text back, so `StreamPolicy` decides which text is final enough to
send:

    "agreed" (default)  a prefix is sent once two seats have produced it. Honest seats of one build
                        produce the same bytes, so a lone cheater or a broken seat never reaches
                        the client; the cost is the second seat's latency instead of the first's.
    "first"             the first seat to produce text is streamed at once (lowest latency). If
                        that seat fails, the stream continues from a seat whose text extends what
                        was sent; if the verified answer turns out different, the stream ends
                        with an error event (`stream_outvoted`) instead of a wrong success.

Either way the released text is a prefix of one seat's output, never a mix; `finish` returns the
rest of the verified answer, or None when what was sent is not a prefix of it.
"""

from __future__ import annotations

from typing import Literal

StreamMode = Literal["agreed", "first"]
STREAM_MODES: tuple[str, ...] = ("agreed", "first")


def _common_prefix_len(a: str, b: str, start: int) -> int:
    """Length of the common prefix of a and b, given that they agree on [0, start)."""
    end = min(len(a), len(b))
    i = start
    while i < end and a[i] == b[i]:
        i += 1
    return i


class StreamPolicy:
    """Feed each seat's pieces; get back the text that may be sent now.

    >>> p = StreamPolicy("agreed")
    >>> p.feed(0, "The sky"), p.feed(1, "The s"), p.feed(2, "THE SKY"), p.feed(1, "ky is")
    ('', 'The s', '', 'ky')
    >>> p.finish("The sky is blue.")
    ' is blue.'
    """

    def __init__(self, mode: StreamMode = "agreed") -> None:
        if mode not in STREAM_MODES:
            raise ValueError(f"stream mode must be one of {', '.join(STREAM_MODES)}")
        self.mode = mode
        self.texts: dict[int, str] = {}
        self.failed: set[int] = set()
        self.released = ""
        self.leader: int | None = None

    def feed(self, seat: int, piece: str) -> str:
        self.texts[seat] = self.texts.get(seat, "") + piece
        return self._advance(seat)

    def fail(self, seat: int) -> str:
        """The seat stopped answering (its provider failed): another may take over."""
        self.failed.add(seat)
        if self.leader == seat:
            self.leader = None
            for other in sorted(self.texts):
                out = self._advance(other)
                if self.leader is not None:
                    return out
        return ""

    def finish(self, verified: str) -> str | None:
        """The rest of the verified answer after what was sent; None if what was sent is not a
        prefix of it (the stream then showed text the majority did not sign)."""
        if not verified.startswith(self.released):
            return None
        rest = verified[len(self.released):]
        self.released = verified
        return rest

    def _advance(self, seat: int) -> str:
        text = self.texts[seat]
        if not text.startswith(self.released) or len(text) == len(self.released):
            return ""
        if self.mode == "first":
            if self.leader is None and seat not in self.failed:
                self.leader = seat
            if seat != self.leader:
                return ""
            return self._release(text)
        r = len(self.released)
        best = r
        for other, t in self.texts.items():
            if other != seat and t.startswith(self.released):
                best = max(best, _common_prefix_len(text, t, r))
        return self._release(text[:best])

    def _release(self, upto: str) -> str:
        new = upto[len(self.released):]
        if new:
            self.released = upto
        return new
