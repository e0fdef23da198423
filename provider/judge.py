"""A juror's judgement of one seat's output: do the published tokens spell the text the seat signed,
and could the model have produced those tokens for this request? (provider/court.py asks.)

The text check is exact: the tokens' bytes, decoded and cut at a stop string exactly as the engine
does it, must hash to the signed text hash, and no token may follow the one that completed a stop
string. The model check is the teacher-forced scorer (provider/scorer.py; the rule and its measured
error rates in docs/VERIFICATION.md). The scorer's model is loaded on first use: most providers
never sit on a jury. The seats of one job are judged one after another with the same request, so
the scorer decodes the shared prompt once, and an output already judged is not scored again.
"""

from __future__ import annotations

import codecs
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

from eth_utils import keccak

from meshmarket.mesh.errors import MeshError
from meshmarket.mesh.market import HARD, PASS, SOFT
from meshmarket.mesh.protocol import Sampling, StopScanner
from meshmarket.provider.scorer import FinishReason, Scorer, scoring_weights

_LEVELS = {"pass": PASS, "soft": SOFT, "hard": HARD}
#: Judged outputs remembered: the seats of a few jobs (a job has at most five).
MEMORY = 16


def spell(tokens: Sequence[int], stop: Sequence[str], piece: Callable[[int], bytes]) -> tuple[str, int | None]:
    """The text a provider's engine builds from `tokens` (provider.engine: each token's bytes through
    an incremental UTF-8 decoder, invalid bytes replaced, cut before the first stop string), and the
    index of the token that completed a stop string (None if none did)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    stops = StopScanner(stop)
    pieces: list[str] = []
    for i, token in enumerate(tokens):
        safe, stopped = stops.feed(decoder.decode(piece(token)))
        pieces.append(safe)
        if stopped:
            return "".join(pieces), i
    tail, _ = stops.feed(decoder.decode(b"", final=True))
    return "".join(pieces) + tail + stops.flush(), None


class ScorerJudge:
    """Judges with a loaded `Scorer` (one verdict at a time: callers hold a lock)."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self._memory: OrderedDict[tuple[str, tuple[int, ...], bytes], tuple[int, str]] = OrderedDict()

    def verdict(self, sampling: Sampling, tokens: list[int], text_hash: bytes) -> tuple[int, str]:
        """(PASS | SOFT | HARD, reason) for one seat's published tokens and signed text hash."""
        key = (sampling.model_dump_json(), tuple(tokens), bytes(text_hash))
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        try:
            result = self._judge(sampling, tokens, text_hash)
        except MeshError as exc:  # e.g. longer than the model's context: nobody can be judged on it
            return PASS, f"cannot judge: {exc}"
        self._memory[key] = result
        if len(self._memory) > MEMORY:
            self._memory.popitem(last=False)
        return result

    def _judge(self, sampling: Sampling, tokens: list[int], text_hash: bytes) -> tuple[int, str]:
        s = self.scorer
        if any(t < 0 or t >= s.n_vocab for t in tokens):
            return HARD, "a token id outside the model's vocabulary"
        text, stopped_at = spell(tokens, sampling.stop, s.token_bytes)
        if keccak(text.encode("utf-8")) != text_hash:
            return HARD, "the signed text is not what its tokens say"
        if stopped_at is not None and stopped_at < len(tokens) - 1:
            return HARD, f"{len(tokens) - 1 - stopped_at} tokens after the one that completed a stop string"
        finish: FinishReason
        if stopped_at is not None:
            finish = "stop_sequence"
        elif len(tokens) >= sampling.max_tokens:
            finish = "length"
        else:
            finish = "stop"
        v = s.score(s.prompt_tokens(sampling), tokens, temperature=sampling.temperature, top_p=sampling.top_p,
                    seed=sampling.seed, finish_reason=finish, max_tokens=sampling.max_tokens)
        return _LEVELS[v.level], v.reason


class LazyJudge:
    """A ScorerJudge whose model is loaded the first time a verdict is asked for: the model file's
    F16 copy when `copy` (provider.scorer.scoring_weights: the same verdicts for less CPU time),
    else the file itself.

    `n_threads` 1 by default: a juror scores beside the paid jobs it serves on the same cores, and
    the court gives it a whole phase (minutes) to vote; more threads shorten the wall time of a
    verdict, never its CPU time (docs/VERIFICATION.md, *Cost*)."""

    def __init__(self, model_path: str, n_threads: int = 1, n_gpu_layers: int = 0, copy: bool = True) -> None:
        self.model_path = model_path
        self.n_threads = n_threads
        self.n_gpu_layers = n_gpu_layers
        self.copy = copy and n_gpu_layers == 0  # on a GPU memory is the scarce part (not measured here)
        self._judge: ScorerJudge | None = None
        self._lock = threading.Lock()

    def verdict(self, sampling: Sampling, tokens: list[int], text_hash: bytes) -> tuple[int, str]:
        with self._lock:
            if self._judge is None:
                weights = scoring_weights(self.model_path) if self.copy else self.model_path
                self._judge = ScorerJudge(Scorer(weights, n_threads=self.n_threads, n_gpu_layers=self.n_gpu_layers))
            return self._judge.verdict(sampling, tokens, text_hash)
