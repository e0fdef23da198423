"""Teacher-forced scoring of a claimed output: could this model, on this request, have produced
these tokens? (provider/judge.py turns the answer into a juror's vote; docs/VERIFICATION.md has
the rule, its calibration and its measured error rates.)

A juror holding the same GGUF file runs one forward pass over ``prompt + claimed tokens`` and reads
the model's logits at every output position; it never regenerates. Honest providers with other
llama.cpp settings or builds (single-row prefill, flash attention, another SIMD path, a GPU)
legitimately produce other bytes, so equal hashes cannot be the test. Each scored position gets one
number, the **slack** (logits; 0 = exactly what the juror's own sampler would do):

* greedy (temperature 0): ``max(logits) - logits[claimed]``;
* sampled: the protocol's sampler chain (top-k 40, top-p, min-p 0.05, temperature, then one
  ``std::mt19937(seed)`` draw per token) is replayed on the juror's logits with the request's
  seed, and the slack is twice the smallest change of the logits (max-norm) under which the
  sampler, with that same draw, picks the claimed token. For greedy decoding this definition gives
  the logit gap again: one scale for both.

Scored positions are the output tokens plus, when the output ended on an end-of-generation token
(finish ``stop``), the position after it (any end-of-generation token counts). ``Rule`` turns the
slack into ``pass``, ``soft`` (not credible enough to pay) or ``hard`` (could not have come from
this model: slashable); impossible claims (a wrong count, an end-of-generation token inside the
output, an id outside the vocabulary) are hard whatever the slack.

Cost: scoring needs the same weights, not the same file: a copy of the model with its weights
dequantized to F16 (`scoring_copy`, made once with llama.cpp's quantize API) gives the same verdicts
at about two thirds of the CPU time on x86 (the batched F16 matrix kernels are faster than the
4-bit ones; docs/VERIFICATION.md). Logits are kept only for the output positions (``(outputs + 1) × n_vocab × 4`` bytes, never
``n_ctx × n_vocab`` as ``Llama(logits_all=True)`` would), and the last scored sequence stays in the
KV cache: a claim sharing its prompt (and any leading tokens) with the previous one is decoded
from where they part. Those rows are bit-identical to a fresh pass (tests/test_scorer.py), so a
verdict never depends on what was scored before it.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from meshmarket.mesh.errors import ContextOverflowError, InferenceError, MeshError, ModelFileError
from meshmarket.mesh.protocol import SAMPLER_MIN_P, SAMPLER_REPEAT_PENALTY, SAMPLER_TOP_K, SAMPLER_TYPICAL_P, Sampling
from meshmarket.provider.prompt import PromptBuilder

#: "stop": an end-of-generation token came next; "length": max_tokens were produced;
#: "stop_sequence": the last token completed one of the request's stop strings.
FinishReason = Literal["stop", "length", "stop_sequence"]
FINISH_REASONS = ("stop", "length", "stop_sequence")
Level = Literal["pass", "soft", "hard"]
#: llama.cpp reads this seed as "pick one at random": such an output cannot be replayed (the
#: protocol's seeds stop one below it, mesh.protocol.MAX_SEED).
UNSEEDED = 0xFFFFFFFF


# ------------------------------------------------------------------------------ the rule


@dataclass(frozen=True)
class Rule:
    """Decision lines on the per-position slack (logits).

    Calibrated on 960 honest outputs (5 llama.cpp configurations, greedy and sampled, 62k scored
    positions): the largest honest slack was 0.54, none exceeded 1.0, and no output had two
    positions above 0.5. The counts grow by one per ``count_step`` positions so that long outputs
    are not failed for their length (honest rate above 0.5: ~5e-5 per position)."""

    hard_single: float = 2.0  # one position above this: hard (3.7x the largest honest slack)
    hard_multi: float = 1.0  # ... or hard_count positions above this: hard
    hard_count: int = 3
    soft_single: float = 1.0  # one position above this: soft
    soft_multi: float = 0.5  # ... or soft_count positions above this: soft
    soft_count: int = 2
    count_step: int = 1024

    def counts(self, n: int) -> tuple[int, int]:
        extra = n // self.count_step
        return self.hard_count + extra, self.soft_count + extra


@dataclass(frozen=True)
class Thresholds:
    """One rule for greedy requests and one for sampled ones: the same numbers came out of both
    calibrations; they are separate so that they can move apart."""

    greedy: Rule = Rule()
    sampled: Rule = Rule()


DEFAULT_THRESHOLDS = Thresholds()


def decide(slack: Sequence[float], rule: Rule) -> tuple[Level, int, str]:
    """A rule applied to per-position slack: (level, index of the worst position, why)."""
    if not len(slack):
        return "pass", -1, "nothing to score"
    sl = np.asarray(slack, dtype=np.float64)
    worst = int(np.argmax(sl))
    hard_count, soft_count = rule.counts(len(sl))
    if sl[worst] > rule.hard_single:
        return "hard", worst, f"{sl[worst]:.2f} > {rule.hard_single}"
    n_hard = int((sl > rule.hard_multi).sum())
    if n_hard >= hard_count:
        return "hard", worst, f"{n_hard} tokens > {rule.hard_multi}"
    if sl[worst] > rule.soft_single:
        return "soft", worst, f"{sl[worst]:.2f} > {rule.soft_single}"
    n_soft = int((sl > rule.soft_multi).sum())
    if n_soft >= soft_count:
        return "soft", worst, f"{n_soft} tokens > {rule.soft_multi}"
    return "pass", worst, f"largest slack {sl[worst]:.2f}"


# ------------------------------------------------------------------------------ the verdict


@dataclass
class Verdict:
    """The scoring of one claimed output, with its evidence. Per-position lists hold the output
    tokens, then the end-of-sequence position when ``eos_scored``."""

    level: Level
    reason: str
    greedy: bool
    n_output: int
    eos_scored: bool
    tokens: list[int]  # claimed token per position (the EOS position: the best end-of-generation token)
    rank: list[int]  # 1 = the juror's argmax
    logprob: list[float]  # log-softmax at temperature 1 over the whole vocabulary
    gap: list[float]  # max logit - claimed logit
    slack: list[float] = field(default_factory=list)  # the decision statistic
    in_support: list[bool] | None = None  # sampled: inside the top-k/top-p/min-p support
    outside: list[float] | None = None  # sampled: support cutoff - claimed logit (> 0: outside)
    replay: list[int] | None = None  # sampled: the token the seeded replay picks
    replay_match: list[bool] | None = None  # sampled: the replay picks the claimed token
    miss: list[float] | None = None  # sampled: probability mass between the draw and the token
    skipped_eos: list[int] = field(default_factory=list)  # positions where the output should have ended
    structural: list[str] = field(default_factory=list)  # impossible claims: hard
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def frac_rank1(self) -> float:
        return sum(r == 1 for r in self.rank) / max(1, len(self.rank))

    @property
    def max_slack(self) -> float:
        return max(self.slack, default=0.0)

    @property
    def replay_match_rate(self) -> float | None:
        if self.replay_match is None or self.notes:
            return None
        return sum(self.replay_match) / max(1, len(self.replay_match))

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest (benchmarks, logs)."""
        d: dict[str, Any] = {
            "level": self.level, "reason": self.reason, "greedy": self.greedy, "n_output": self.n_output,
            "eos_scored": self.eos_scored, "frac_rank1": round(self.frac_rank1, 4),
            "worst_rank": max(self.rank, default=1), "max_slack": round(self.max_slack, 4),
            "min_logprob": round(min(self.logprob, default=0.0), 3), "skipped_eos": self.skipped_eos,
            "structural": self.structural, "notes": self.notes, "seconds": round(self.seconds, 4),
        }
        if not self.greedy:
            rate = self.replay_match_rate
            d["replay_match_rate"] = None if rate is None else round(rate, 4)
            d["n_outside"] = sum(not s for s in self.in_support or [])
        return d


# ------------------------------------------------------------------------------ sampler replay


def mt19937_uniforms(seed: int, n: int) -> np.ndarray:
    """The first ``n`` draws of ``std::uniform_real_distribution<double>(0, 1)`` over
    ``std::mt19937(seed)`` (llama.cpp's dist sampler), as libstdc++ and libc++ compute them: two
    32-bit outputs a, b give ``(a + b * 2**32) / 2**64``."""
    bitgen = np.random.MT19937()
    bitgen._legacy_seeding(seed)  # == std::mt19937(seed); MT19937(seed) seeds differently
    raw = bitgen.random_raw(2 * n).astype(np.float64)
    u = (raw[0::2] + raw[1::2] * 4294967296.0) / 18446744073709551616.0
    return np.minimum(u, np.nextafter(1.0, 0.0))


def top_k_sorted(logits: np.ndarray, k: int = SAMPLER_TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ids and logits of the k largest logits, by descending logit then id
    (llama.cpp's partial sort leaves ties in no defined order; the slack absorbs that)."""
    k = min(k, logits.shape[1])
    part = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(logits, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)


@dataclass(frozen=True)
class Replay:
    """The protocol sampler at one position: its support, each kept token's interval of the
    cumulative distribution, and the token it picks for the draw ``u``."""

    ids: np.ndarray  # support token ids, by descending logit
    lo: np.ndarray  # each one's interval start (fraction of the total mass)
    hi: np.ndarray  # and end
    cutoff: float  # the lowest logit still inside the support
    selected: int


def _support_size(z: np.ndarray, top_p: float) -> tuple[int, float]:
    """How many of the top-k logits ``z`` survive top-p then min-p, and the support's cutoff logit
    (llama.cpp's order: both run before the temperature, so the support does not depend on it)."""
    size, by_min_p = len(z), False
    if top_p < 1.0:  # softmax at temperature 1 over the top-k tokens, float32 as in C
        p = np.exp(z - z[0]).astype(np.float32)
        cum = np.cumsum((p / np.cumsum(p, dtype=np.float32)[-1]).astype(np.float32), dtype=np.float32)
        hit = np.nonzero(cum >= np.float32(top_p))[0]
        size = min(size, int(hit[0]) + 1 if hit.size else size)
    min_logit = np.float32(z[0] + np.float32(math.log(SAMPLER_MIN_P)))
    keep = 1  # the sorted path of llama.cpp's min-p always keeps the first token
    while keep < size and z[keep] >= min_logit:
        keep += 1
    if keep < size:
        size, by_min_p = keep, True
    return size, float(min_logit) if by_min_p else float(z[size - 1])


def replay_row(top_ids: np.ndarray, top_z: np.ndarray, temperature: float, top_p: float, u: float) -> Replay:
    """The protocol sampler chain on one position's top-k ids and logits (float32, sorted), with
    the draw ``u``: temperature then dist, probabilities in float and sums in double as in C."""
    z = top_z.astype(np.float32)
    size, cutoff = _support_size(z, top_p)
    ids, z = top_ids[:size], z[:size]
    zt = (z / np.float32(temperature)).astype(np.float32)
    cum = np.cumsum(np.exp(zt - zt[0]).astype(np.float32).astype(np.float64))
    sel = min(int(np.searchsorted(cum, cum[-1] * u, side="left")), size - 1)
    hi = cum / cum[-1]
    return Replay(ids=ids, lo=np.concatenate(([0.0], hi[:-1])), hi=hi, cutoff=cutoff, selected=int(ids[sel]))


def replay_slack(top_z: np.ndarray, top_ids: np.ndarray, z_t: float, t: int, cutoff: float, temperature: float,
                 u: float, max_eps: float = 8.0, iters: int = 24) -> float:
    """2 × the smallest eps such that moving every logit by at most eps lets the sampler, with the
    draw ``u``, pick token ``t``. A relaxation: for each eps it bounds the lowest start and the
    highest end of t's cumulative interval (tokens within 2 eps of t may swap places with it,
    tokens within 2 eps of the support cutoff may enter or leave). Bisection on eps."""
    z = top_z[top_ids != t].astype(np.float64)
    zt = float(z_t)
    zmax = max(float(z.max(initial=zt)), zt)

    def feasible(eps: float) -> bool:
        if zt < cutoff - 2 * eps:
            return False
        possible = z >= cutoff - 2 * eps
        certain = z >= cutoff + 2 * eps
        before_certain = possible & (z > zt + 2 * eps)
        before_possible = possible & (z >= zt - 2 * eps)
        w_dn = np.exp((z - eps - zmax) / temperature)
        w_up = np.exp((z + eps - zmax) / temperature)
        wt = math.exp((zt + eps - zmax) / temperature)
        bc = float(w_dn[before_certain].sum())
        lo = bc / (bc + wt + float(w_up[possible & ~before_certain].sum()))
        bp = float(w_up[before_possible].sum()) + wt
        hi = bp / (bp + float(w_dn[certain & ~before_possible].sum()))
        return lo <= u <= hi

    if feasible(0.0):
        return 0.0
    if not feasible(max_eps):
        return 2 * max_eps
    lo_e, hi_e = 0.0, max_eps
    for _ in range(iters):
        mid = 0.5 * (lo_e + hi_e)
        lo_e, hi_e = (lo_e, mid) if feasible(mid) else (mid, hi_e)
    return 2 * hi_e


def _mass_distance(u: float, lo: float, hi: float) -> float:
    return 0.0 if lo <= u <= hi else (lo - u if u < lo else u - hi)


def _sampled_position(row: np.ndarray, top_ids: np.ndarray, top_z: np.ndarray, accept: set[int], claimed: int,
                      temperature: float, top_p: float, u: float | None) -> tuple[Replay, float, float, float]:
    """One sampled position: (replay, outside, miss, slack). ``accept`` is the set of tokens that
    fulfil the claim ({claimed}, or every end-of-generation token at the EOS position); without a
    draw ``u`` only the support is checked."""
    rp = replay_row(top_ids, top_z, temperature, top_p, 0.5 if u is None else u)
    outside = rp.cutoff - float(row[claimed])
    if u is None:
        return rp, outside, 0.0, max(0.0, outside)
    if rp.selected in accept:
        return rp, outside, 0.0, 0.0
    kept = [j for j, t in enumerate(rp.ids.tolist()) if t in accept]
    miss = min((_mass_distance(u, float(rp.lo[j]), float(rp.hi[j])) for j in kept), default=1.0 - u)
    targets = [int(t) for t in top_ids if int(t) in accept] or [claimed]
    slack = min(replay_slack(top_z, top_ids, float(row[t]), t, rp.cutoff, temperature, u) for t in targets)
    return rp, outside, miss, slack


# ------------------------------------------------------------------------------ the scorer's weights


#: A model file up to this size gets an F16 copy for scoring (about 3.5 times the size of a 4-bit
#: file); a larger one is scored as it is.
COPY_LIMIT_BYTES = 1 << 30


@contextmanager
def _quiet_llama() -> Iterator[None]:
    """llama-cpp-python prints llama.cpp's info logs (every tensor of a quantization) until a Llama is
    made with verbose=False: keep its logger at ERROR meanwhile."""
    logger = logging.getLogger("llama-cpp-python")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


def cache_dir() -> Path:
    """The per-user cache (as provider.modelfile's): $MESH_CACHE, else $XDG_CACHE_HOME, else ~/.cache."""
    base = os.environ.get("MESH_CACHE") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "meshmarket"


def scoring_copy(model_path: str | Path, directory: Path | None = None, ftype: str = "F16") -> Path:
    """A copy of the model with its weights dequantized to `ftype`, made once (llama.cpp's quantize
    API, a few seconds for a small model) and kept in `directory` (default: the cache's
    "scoring" folder), named by the source's sha256. The same weights in another encoding: verdicts
    equal those of the file itself (bench/verify.py compares both), at less CPU time."""
    import llama_cpp

    from meshmarket.provider.modelfile import file_sha256

    folder = directory or cache_dir() / "scoring"
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / f"{file_sha256(model_path)[2:18]}.{ftype}.gguf"
    if dst.exists():
        return dst
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_ALL_F32" if ftype == "F32" else f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.allow_requantize = True
    params.nthread = 1
    tmp = dst.with_name(f"{dst.name}.{os.getpid()}.part")
    try:
        with _quiet_llama():
            rc = llama_cpp.llama_model_quantize(str(model_path).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise ModelFileError(f"could not make an {ftype} copy of {model_path} (code {rc})",
                                 "score with the model file itself")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def _float_weights(model_path: Path) -> bool:
    """Whether the file's weights are already floats (GGUF general.file_type F32, F16 or BF16)."""
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True  # the metadata, no tensors
    with _quiet_llama():
        model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), params)
    if not model:
        raise ModelFileError(f"llama.cpp could not read {model_path}")
    try:
        value = ctypes.create_string_buffer(32)
        found = llama_cpp.llama_model_meta_val_str(model, b"general.file_type", value, len(value)) >= 0
    finally:
        llama_cpp.llama_model_free(model)
    floats = (llama_cpp.LLAMA_FTYPE_ALL_F32, llama_cpp.LLAMA_FTYPE_MOSTLY_F16, llama_cpp.LLAMA_FTYPE_MOSTLY_BF16)
    return found and value.value.isdigit() and int(value.value) in floats


def scoring_weights(model_path: str | Path, limit: int = COPY_LIMIT_BYTES) -> Path:
    """What a juror should load to score `model_path`: its F16 copy when the file is quantized and
    small enough, else the file itself (also when the copy cannot be made)."""
    path = Path(model_path)
    try:
        if path.stat().st_size > limit or _float_weights(path):
            return path
        return scoring_copy(path)
    except (OSError, ValueError, MeshError) as exc:
        logging.getLogger("meshmarket.provider.scorer").warning("scoring with %s itself: %s", path, exc)
        return path


# ------------------------------------------------------------------------------ the scorer


class Scorer:
    """One model loaded for scoring; claims are scored one at a time (not thread-safe: the judge
    holds a lock). ``n_threads`` only changes speed, never a logit (measured: 1 and 2 threads give
    identical rows). ``n_gpu_layers`` offloads like the engine does; see docs/VERIFICATION.md
    before trusting hard verdicts computed or judged on a GPU."""

    def __init__(self, model_path: str | Path, *, n_ctx: int = 4096, n_threads: int = 1, n_ubatch: int = 512,
                 n_gpu_layers: int = 0, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> None:
        import llama_cpp  # deferred, as in provider.engine: loading llama.cpp is heavy

        self.model_path = str(model_path)
        if not Path(self.model_path).is_file():
            raise ModelFileError(f"model file not found: {self.model_path}", "pass the path of a .gguf file")
        if SAMPLER_TYPICAL_P != 1.0 or SAMPLER_REPEAT_PENALTY != 1.0:
            # The replay (replay_row) leaves out the typical-p and penalty stages: they are no-ops at 1.
            raise InferenceError("the sampler replay assumes typical-p 1 and repeat penalty 1",
                                 "extend provider.scorer.replay_row to the protocol's sampler first")
        self.thresholds = thresholds
        self.n_threads, self.n_ubatch, self.n_gpu_layers = n_threads, n_ubatch, n_gpu_layers
        self._lc = llama_cpp
        self._llama: Any = None
        self._batch: Any = None
        self._open(n_ctx)
        self.n_vocab: int = self._llama.n_vocab()
        self.n_ctx_train: int = llama_cpp.llama_model_n_ctx_train(self._llama.model)
        vocab = llama_cpp.llama_model_get_vocab(self._llama.model)
        self.eog_tokens = np.array([t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)],
                                   dtype=np.int64)
        self._eog = set(self.eog_tokens.tolist())

    def _open(self, n_ctx: int) -> None:
        """(Re)create the llama.cpp context: at start, and when a claim needs a larger one."""
        self._close_context()
        self._llama = self._lc.Llama(model_path=self.model_path, n_ctx=n_ctx, n_batch=self.n_ubatch,
                                     n_ubatch=self.n_ubatch, n_threads=self.n_threads,
                                     n_threads_batch=self.n_threads, n_gpu_layers=self.n_gpu_layers,
                                     flash_attn=False, verbose=False)
        self.n_ctx: int = self._llama.n_ctx()
        self._batch = self._lc.llama_batch_init(self.n_ubatch, 0, 1)
        self.prompts = PromptBuilder(self._llama, self.model_path)
        self._seq: list[int] = []  # tokens whose keys and values are in the cache
        self._rows = np.empty((0, 0), dtype=np.float32)  # logits of _seq's positions _first..
        self._first = 0

    # -- prompts: provider.prompt, the builder the engine uses too

    def prompt_tokens(self, sampling: Sampling) -> list[int]:
        """The prompt tokens a provider's engine feeds the model for this request."""
        return self.prompts.tokens(sampling)

    def token_bytes(self, token: int) -> bytes:
        """One token's bytes, as a provider builds its output (one token at a time)."""
        return self._llama.detokenize([token])

    def tokenize(self, text: str) -> list[int]:
        return self._llama.tokenize(text.encode(), add_bos=False, special=False)

    # -- teacher forcing

    def forward(self, tokens: Sequence[int], first: int) -> np.ndarray:
        """The logits (float32, ``[len(tokens) - first, n_vocab]``) of positions ``first..``: row j
        predicts the token at ``first + j + 1``. What the cache holds from the previous call (the
        same leading tokens) is reused; at least two positions are always decoded, so the rows come
        from the same multi-row kernels as a fresh pass and are bit-identical to one."""
        tokens, n = list(tokens), len(tokens)
        if not 0 <= first < n:
            raise InferenceError(f"no position {first} in {n} tokens")
        if n > self.n_ctx:
            self._grow(n)
        same = 0
        for a, b in zip(tokens, self._seq):
            if a != b:
                break
            same += 1
        start = min(same, n - 2) if self._first <= first else min(same, first, n - 2)
        start = max(start, 0)
        if same == n == len(self._seq) and self._first <= first:
            return self._rows[first - self._first:]
        reused = self._rows[first - self._first: start - self._first] if start > first else self._rows[:0]
        mem = self._lc.llama_get_memory(self._llama.ctx)
        if start == 0:
            self._lc.llama_memory_clear(mem, True)
        else:
            self._lc.llama_memory_seq_rm(mem, 0, start, -1)
        fresh = self._decode(tokens, start, first)
        rows = np.concatenate((reused, fresh)) if len(reused) else fresh
        self._seq, self._rows, self._first = tokens, rows, first
        return rows

    def reset(self) -> None:
        """Forget the cached sequence: the next claim is decoded from an empty cache."""
        self._seq, self._rows, self._first = [], np.empty((0, 0), dtype=np.float32), 0

    def _grow(self, n: int) -> None:
        if n > self.n_ctx_train:
            raise ContextOverflowError(f"{n} tokens exceed the model's trained context of {self.n_ctx_train}")
        self._open(min(self.n_ctx_train, -(-n // 1024) * 1024))

    def _decode(self, tokens: list[int], start: int, first: int) -> np.ndarray:
        """Decode ``tokens[start:]`` onto the cache in ubatch-sized calls; the logits of positions
        ``max(start, first)..`` (llama.cpp returns flagged rows contiguously, in batch order)."""
        lc, batch, n = self._lc, self._batch, len(tokens)
        out = np.empty((n - max(start, first), self.n_vocab), dtype=np.float32)
        r = 0
        for s in range(start, n, self.n_ubatch):
            chunk = tokens[s:s + self.n_ubatch]
            batch.n_tokens = len(chunk)
            for j, tok in enumerate(chunk):
                batch.token[j], batch.pos[j], batch.n_seq_id[j] = tok, s + j, 1
                batch.seq_id[j][0] = 0
                batch.logits[j] = s + j >= first
            n_out = sum(1 for j in range(len(chunk)) if s + j >= first)
            rc = lc.llama_decode(self._llama.ctx, batch)
            if rc != 0:
                self._seq = []  # the cache is in an unknown state: start afresh next time
                raise InferenceError(f"llama_decode failed with code {rc}", "retry; the scorer starts afresh")
            if n_out:
                ptr = lc.llama_get_logits(self._llama.ctx)
                out[r:r + n_out] = np.ctypeslib.as_array(ptr, shape=(n_out * self.n_vocab,)).reshape(n_out, -1)
                r += n_out
        return out

    # -- scoring

    def score(self, prompt_tokens: Sequence[int], output_tokens: Sequence[int], *, temperature: float,
              top_p: float = 1.0, seed: int | None = None, finish_reason: FinishReason, max_tokens: int,
              completion_tokens: int | None = None) -> Verdict:
        """Score one claimed output. ``output_tokens`` excludes the final end-of-generation token (as
        a result's tokens do). A sampled claim needs its ``seed`` for the replay; without one only
        the support is checked, which is much weaker (docs/VERIFICATION.md)."""
        t0 = time.perf_counter()
        greedy = temperature <= 0.0
        prompt, output = list(prompt_tokens), list(output_tokens)
        if not prompt:
            raise InferenceError("nothing to score: the prompt has no tokens")
        if not greedy and not 0.0 < top_p <= 1.0:
            raise InferenceError(f"top_p must be in (0, 1], got {top_p}")
        structural = self._structural(output, finish_reason, max_tokens, completion_tokens)
        output = [t if 0 <= t < self.n_vocab else 0 for t in output]
        eos_scored = finish_reason == "stop"
        n_rows = len(output) + eos_scored
        if n_rows == 0:
            return Verdict(level="hard" if structural else "pass", reason="; ".join(structural) or "empty output",
                           greedy=greedy, n_output=0, eos_scored=False, tokens=[], rank=[], logprob=[], gap=[],
                           structural=structural, seconds=time.perf_counter() - t0)
        seq = prompt + output
        logits = self.forward(seq if eos_scored else seq[:-1], len(prompt) - 1)
        claimed = np.array(output + [0] * eos_scored, dtype=np.int64)
        if eos_scored:  # the EOS position accepts any end-of-generation token: take the best
            claimed[-1] = int(self.eog_tokens[np.argmax(logits[-1, self.eog_tokens])])
        v = self._greedy_stats(logits, claimed, greedy, len(output), eos_scored, structural)
        if greedy:
            v.slack = v.gap
            argmax = logits.argmax(axis=1)
            v.skipped_eos = [i for i in range(len(output))
                             if int(argmax[i]) in self._eog and v.gap[i] > self.thresholds.greedy.soft_multi]
        else:
            self._score_sampled(v, logits, claimed, temperature, top_p, seed)
        v.level, v.reason = self._decide(v)
        v.seconds = time.perf_counter() - t0
        return v

    def _structural(self, output: list[int], finish: str, max_tokens: int, completion_tokens: int | None) -> list[str]:
        """Claims no honest provider can make, whatever its floats: each is hard."""
        found = []
        if any(t < 0 or t >= self.n_vocab for t in output):
            found.append("a token id outside the vocabulary")
        inside = [i for i, t in enumerate(output) if t in self._eog]
        if inside:
            found.append(f"an end-of-generation token inside the output (at {inside[:5]})")
        if len(output) > max_tokens:
            found.append(f"{len(output)} tokens exceed max_tokens={max_tokens}")
        if finish not in FINISH_REASONS:
            found.append(f"unknown finish reason {finish!r}")
        if finish == "length" and len(output) != max_tokens:
            found.append(f"finish 'length' with {len(output)} tokens, max_tokens={max_tokens}")
        if finish == "stop" and len(output) >= max_tokens:
            found.append("finish 'stop' although max_tokens tokens were produced")
        if completion_tokens is not None and completion_tokens != len(output):
            found.append(f"a count of {completion_tokens} tokens for {len(output)} token ids")
        return found

    def _greedy_stats(self, logits: np.ndarray, claimed: np.ndarray, greedy: bool, n_output: int, eos_scored: bool,
                      structural: list[str]) -> Verdict:
        """Rank, log-probability and gap of every claimed token (numpy over all rows at once)."""
        rows = np.arange(len(claimed))
        zc = logits[rows, claimed]
        zmax = logits.max(axis=1)
        rank = (logits > zc[:, None]).sum(axis=1) + 1
        lse = zmax + np.log(np.exp(logits - zmax[:, None]).sum(axis=1, dtype=np.float64))
        return Verdict(level="pass", reason="", greedy=greedy, n_output=n_output, eos_scored=eos_scored,
                       tokens=claimed.tolist(), rank=rank.tolist(), logprob=(zc - lse).astype(np.float64).tolist(),
                       gap=(zmax - zc).astype(np.float64).tolist(), structural=structural)

    def _score_sampled(self, v: Verdict, logits: np.ndarray, claimed: np.ndarray, temperature: float, top_p: float,
                       seed: int | None) -> None:
        n_rows = logits.shape[0]
        replayable = seed is not None and seed != UNSEEDED
        draws = mt19937_uniforms(seed, n_rows) if replayable else None
        top_ids, top_z = top_k_sorted(logits)
        v.in_support, v.outside, v.replay, v.replay_match, v.miss = [], [], [], [], []
        for i in range(n_rows):
            at_eos = v.eos_scored and i == n_rows - 1
            accept = self._eog if at_eos else {int(claimed[i])}
            u = None if draws is None else float(draws[i])
            rp, outside, miss, slack = _sampled_position(logits[i], top_ids[i], top_z[i], accept, int(claimed[i]),
                                                         temperature, top_p, u)
            v.in_support.append(any(int(t) in accept for t in rp.ids))
            v.outside.append(outside)
            v.replay.append(rp.selected)
            v.replay_match.append(rp.selected in accept)
            v.miss.append(miss)
            v.slack.append(slack)
        if replayable:
            line = self.thresholds.sampled.soft_multi
            v.skipped_eos = [i for i in range(v.n_output) if v.replay[i] in self._eog and v.slack[i] > line]
        else:
            v.notes.append("no replayable seed: support check only")

    def _decide(self, v: Verdict) -> tuple[Level, str]:
        if v.structural:
            return "hard", "; ".join(v.structural)
        level, worst, why = decide(v.slack, self.thresholds.greedy if v.greedy else self.thresholds.sampled)
        where = "the end-of-sequence position" if v.eos_scored and worst == len(v.slack) - 1 else f"token {worst}"
        if v.greedy:
            detail = f"worst: {where}, {v.slack[worst]:.2f} logits below the argmax (rank {v.rank[worst]})"
            summary = f"{v.frac_rank1:.0%} of tokens at rank 1"
        else:
            outside = v.outside[worst] if v.outside else 0.0
            detail = (f"worst: {where} needs a {v.slack[worst]:.2f}-logit change for the seeded sampler to pick it"
                      + (f", {outside:.2f} logits outside the top-k/top-p/min-p support" if outside > 0 else ""))
            rate = v.replay_match_rate
            summary = "no seed: support check only" if rate is None else f"seeded replay matched {rate:.0%}"
        if v.skipped_eos:
            detail += f"; the output should have ended at {v.skipped_eos[:5]}"
        if level == "pass":
            return "pass", f"{summary}, largest slack {v.max_slack:.2f}"
        return level, f"{why}; {detail}; {summary}"

    # -- lifetime

    def _close_context(self) -> None:
        if self._batch is not None:
            self._lc.llama_batch_free(self._batch)
            self._batch = None
        if self._llama is not None:
            self._llama.close()
            self._llama = None

    def close(self) -> None:
        self._close_context()

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
