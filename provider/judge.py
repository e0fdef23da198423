"""A juror's judgement of one seat's output: does the claimed text come from the published tokens,
and could the model have produced those tokens for this request? (provider/court.py asks.)

The text check is exact (the tokens' bytes, decoded and cut at a stop string, must hash to the
text hash the seat signed). The model check is the teacher-forced scorer (provider/scorer.py,
thresholds and their measured error rates in docs/VERIFICATION.md). The scorer's model is loaded
on first use: most providers never sit on a jury.
"""

from __future__ import annotations

import threading

from eth_utils import keccak

from mesh.market import HARD, PASS, SOFT
from mesh.protocol import Sampling, StopScanner

_LEVELS = {"pass": PASS, "soft": SOFT, "hard": HARD}


class ScorerJudge:
    def __init__(self, scorer) -> None:
        self.scorer = scorer

    def verdict(self, sampling: Sampling, tokens: list[int], text_hash: bytes) -> tuple[int, str]:
        s = self.scorer
        if any(t < 0 or t >= s.n_vocab for t in tokens):
            return HARD, "a token id outside the model's vocabulary"
        raw = b"".join(s.token_bytes(t) for t in tokens).decode("utf-8", errors="replace")
        text = StopScanner.cut(raw, sampling.stop)
        if keccak(text.encode("utf-8")) != text_hash:
            return HARD, "the signed text is not what its tokens say"
        if len(tokens) >= sampling.max_tokens:
            finish = "length"
        elif text != raw:
            finish = "stop_sequence"
        else:
            finish = "stop"
        if sampling.messages is not None:
            prompt = s.chat_prompt_tokens([{"role": m.role, "content": m.content} for m in sampling.messages])
        else:
            prompt = s.raw_prompt_tokens(sampling.prompt or "")
        v = s.score(prompt, tokens, temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed,
                    finish_reason=finish, max_tokens=sampling.max_tokens)
        return _LEVELS[v.level], v.reason


class LazyJudge:
    """A ScorerJudge whose model is loaded the first time a verdict is asked for."""

    def __init__(self, model_path: str) -> None:
        self.model_path = model_path
        self._judge: ScorerJudge | None = None
        self._lock = threading.Lock()

    def verdict(self, sampling: Sampling, tokens: list[int], text_hash: bytes) -> tuple[int, str]:
        with self._lock:
            if self._judge is None:
                from provider.scorer import Scorer

                self._judge = ScorerJudge(Scorer(self.model_path))
            return self._judge.verdict(sampling, tokens, text_hash)
