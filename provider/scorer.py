"""Teacher-forced verification of a provider's claimed output (llama.cpp, CPU or GPU).

A verifier holding the same GGUF file runs ONE forward pass over ``prompt + claimed
output`` and reads the model's logits at every output position. It never regenerates:
honest providers with different llama.cpp settings (n_batch/n_ubatch, flash attention,
GPU offload) legitimately produce different bytes, so "same hash" is not a usable test.
Instead each claimed token is asked: *could this model, on this prompt, with these
sampling parameters, have produced this token here?*

Greedy requests (temperature 0)
    The claimed token must be the argmax. Per token we measure the **logit gap**
    ``max(logits) - logits[claimed]`` (0 when the claimed token is the verifier's argmax).
    Honest outputs from other configurations have gaps well below 1 logit (float noise
    between kernels); a different model, a cheaper quantization or a sampled text has
    many gaps of several logits.

Sampled requests (temperature > 0)
    The protocol sampler is llama.cpp's chain (top_k=40, typical_p=1, top_p, min_p=0.05,
    temperature, dist(seed)); its only randomness is ``std::mt19937(seed)`` with one
    ``uniform_real_distribution<double>`` draw per generated token. The scorer replays that
    chain exactly on the verifier's logits (**seeded replay**): for each position it knows the
    uniform number ``u`` the provider's sampler drew, so it knows which token the sampler
    would pick. An honest output matches the replay except where float noise moves an
    interval boundary across ``u``; then ``u`` is still close to the claimed token's interval.
    Per token we measure
    * ``miss``: 0 if the replay picks the claimed token, else the probability mass between
      ``u`` and the claimed token's interval in the sampler's final distribution;
    * ``outside``: how many logits the claimed token lies outside the sampler's support
      (top_k 40 / min_p 0.05 / top_p); > 0 means the sampler could not pick it at all.
    The support does not depend on the temperature: in this chain top_k, top_p and min_p run
    *before* the temperature is applied (temperature only reshapes the kept tokens).

End of sequence
    ``finish_reason='stop'`` means the sampler chose an end-of-generation (EOG) token right
    after the output: that position is scored like a claimed token whose value is "any EOG
    token". ``'length'`` requires ``len(output) == max_tokens``. An EOG token inside the output
    is impossible (the provider stops on it). A position where the verifier's argmax (greedy)
    or replay (sampled) is EOG but the output goes on is reported as a skipped EOS.

Levels
    ``hard``: could not have come from this model on this prompt (slashable);
    ``soft``: not credible enough to pay, not enough to slash; ``pass``.
    The thresholds (``Thresholds``) were calibrated on honest outputs from several llama.cpp
    configurations and on cheats; see NOTES.md next to this file.

Usage::

    scorer = Scorer(model_path)
    prompt = scorer.chat_prompt_tokens([{"role": "user", "content": "Hi"}])
    verdict = scorer.score(prompt, output_tokens, temperature=0.0, top_p=1.0, seed=0,
                           finish_reason="stop", max_tokens=64)
    verdict.level, verdict.reason

Costs: one prefill of ``len(prompt) + len(output)`` tokens; logits are kept only for the
output positions (``(len(output) + 1) * n_vocab * 4`` bytes, 19 MB for 96 tokens of a 49k
vocabulary), never ``n_ctx * n_vocab`` as ``Llama(logits_all=True)`` would allocate.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import llama_cpp
import numpy as np

# Protocol sampler constants (copied from provider/engine.py; they must stay equal).
SAMPLER_TOP_K = 40
SAMPLER_MIN_P = 0.05
SAMPLER_TYPICAL_P = 1.0
SAMPLER_REPEAT_PENALTY = 1.0
# llama.cpp reads this seed as "random": such an output cannot be replayed.
LLAMA_DEFAULT_SEED = 0xFFFFFFFF

#: "stop": an end-of-generation token came next; "length": max_tokens were produced; "stop_sequence":
#: the text reached one of the request's stop strings (no end-of-generation token is expected).
FinishReason = Literal["stop", "length", "stop_sequence"]
Level = Literal["pass", "soft", "hard"]


# --------------------------------------------------------------------------------------
# Thresholds
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """Decision lines on the per-token slack (logits; see ``Verdict.slack``).

    Counts are per output, the EOS position included for finish 'stop'. Values calibrated
    in /work/scratch/verify (see NOTES.md).
    """

    # Greedy: slack = logit gap = max logit - claimed logit.
    greedy_hard_gap: float = 3.0  # any single token this far below the argmax -> hard
    greedy_hard_gap2: float = 1.5  # ... or at least greedy_hard_count2 tokens this far
    greedy_hard_count2: int = 3
    greedy_soft_gap: float = 0.5  # soft when more than greedy_soft_count tokens exceed this
    greedy_soft_count: int = 2

    # Sampled: slack = smallest logit perturbation (x2, comparable to a greedy gap) that
    # makes the seeded sampler pick the claimed token.
    sampled_hard_slack: float = 3.0
    sampled_hard_slack2: float = 1.5
    sampled_hard_count2: int = 3
    sampled_soft_slack: float = 0.5
    sampled_soft_count: int = 2


DEFAULT_THRESHOLDS = Thresholds()


# --------------------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------------------


@dataclass
class Verdict:
    """Scoring result for one claimed output.

    Per-position arrays have one entry per scored position: the output tokens, plus the
    end-of-sequence position when ``finish_reason == 'stop'`` (``eos_scored``).
    """

    level: Level
    reason: str
    greedy: bool
    n_output: int
    eos_scored: bool
    # per position
    tokens: list[int]  # claimed token (for the EOS position: best-scoring EOG token)
    rank: list[int]  # 1 = argmax of the verifier's logits
    logprob: list[float]  # log-softmax at temperature 1 over the full vocabulary
    gap: list[float]  # max logit - claimed logit (>= 0)
    slack: list[float] = field(default_factory=list)  # the decision statistic (logits), 0 = exact
    in_support: list[bool] | None = None  # sampled only: inside top_k/top_p/min_p support
    outside: list[float] | None = None  # sampled only: cutoff - claimed logit (> 0: outside)
    replay: list[int] | None = None  # sampled only: token the seeded replay picks
    replay_match: list[bool] | None = None  # sampled only: replay picks the claimed token
    miss: list[float] | None = None  # sampled only: replay mass distance (0 = match)
    skipped_eos: list[int] = field(default_factory=list)  # positions where EOS was due
    structural: list[str] = field(default_factory=list)  # impossible claims (counts, EOG) -> hard
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    # summaries -----------------------------------------------------------------------
    @property
    def frac_rank1(self) -> float:
        return sum(r == 1 for r in self.rank) / max(1, len(self.rank))

    @property
    def worst_rank(self) -> int:
        return max(self.rank, default=1)

    @property
    def max_gap(self) -> float:
        return max(self.gap, default=0.0)

    @property
    def max_slack(self) -> float:
        return max(self.slack, default=0.0)

    def n_slack_over(self, x: float) -> int:
        return sum(s > x for s in self.slack)

    @property
    def min_logprob(self) -> float:
        return min(self.logprob, default=0.0)

    @property
    def replay_match_rate(self) -> float | None:
        if self.replay_match is None or self.notes:
            return None
        return sum(self.replay_match) / max(1, len(self.replay_match))

    def summary(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "level": self.level,
            "reason": self.reason,
            "greedy": self.greedy,
            "n_output": self.n_output,
            "eos_scored": self.eos_scored,
            "frac_rank1": round(self.frac_rank1, 4),
            "worst_rank": self.worst_rank,
            "max_gap": round(self.max_gap, 4),
            "max_slack": round(self.max_slack, 4),
            "min_logprob": round(self.min_logprob, 3),
            "n_logprob_le_-8": sum(lp <= -8.0 for lp in self.logprob),
            "skipped_eos": self.skipped_eos,
            "structural": self.structural,
            "notes": self.notes,
            "seconds": round(self.seconds, 4),
        }
        if not self.greedy:
            rate = self.replay_match_rate
            d["replay_match_rate"] = None if rate is None else round(rate, 4)
            d["max_miss"] = round(max(self.miss or [0.0]), 4)
            d["max_outside"] = round(max(self.outside or [-99.0]), 4)
            d["n_outside"] = sum(not s for s in self.in_support or [])
        return d


# --------------------------------------------------------------------------------------
# Sampler replay (mirror of llama.cpp's top_k -> typical -> top_p -> min_p -> temp -> dist)
# --------------------------------------------------------------------------------------


def mt19937_uniforms(seed: int, n: int) -> np.ndarray:
    """The first ``n`` values of ``std::uniform_real_distribution<double>(0, 1)`` over
    ``std::mt19937(seed)``, as libstdc++/libc++ compute them: two 32-bit draws a, b give
    ``(a + b * 2**32) / 2**64`` (``generate_canonical<double, 53>``)."""
    bitgen = np.random.MT19937()
    bitgen._legacy_seeding(seed)  # == std::mt19937(seed) / init_genrand
    raw = bitgen.random_raw(2 * n).astype(np.float64)
    u = (raw[0::2] + raw[1::2] * 4294967296.0) / 18446744073709551616.0
    return np.minimum(u, np.nextafter(1.0, 0.0))


@dataclass(frozen=True)
class _Replay:
    ids: np.ndarray  # support token ids, sorted by descending logit
    lo: np.ndarray  # cumulative interval start (fraction of total) per support token
    hi: np.ndarray  # cumulative interval end
    cutoff_logit: float  # lowest logit a token may have and still be in the support
    selected: int  # token id the sampler picks for this u


def _replay_row(top_ids: np.ndarray, top_z: np.ndarray, temperature: float, top_p: float, u: float) -> _Replay:
    """Apply the protocol sampler chain to one position, given its top-k token ids and their
    logits (float32, sorted by descending logit, then id), with the sampler's draw ``u``."""
    ids, z = top_ids, top_z.astype(np.float32)
    size = len(ids)
    binding = "top_k"
    # typical_p == 1 -> no-op. top_p: softmax at temperature 1 over the top-k tokens.
    if top_p < 1.0:
        p = np.exp(z - z[0]).astype(np.float32)
        p = (p / np.cumsum(p, dtype=np.float32)[-1]).astype(np.float32)
        cum = np.cumsum(p, dtype=np.float32)
        hit = np.nonzero(cum >= np.float32(top_p))[0]
        last = int(hit[0]) + 1 if hit.size else size
        if last < size:
            size, binding = last, "top_p"
    # min_p (llama.cpp's sorted path): keep logit >= max + logf(min_p); always keep the first.
    min_logit = np.float32(z[0] + np.float32(math.log(SAMPLER_MIN_P)))
    keep = 1
    while keep < size and z[keep] >= min_logit:
        keep += 1
    if keep < size:
        size, binding = keep, "min_p"
    # The lowest logit a token must reach to be inside the support.
    cutoff_logit = float(min_logit) if binding == "min_p" else float(z[size - 1])
    ids, z = ids[:size], z[:size]
    # temperature then dist: probs in float, sums in double (llama_sampler_dist_apply).
    zt = (z / np.float32(temperature)).astype(np.float32)
    p = np.exp(zt - zt[0]).astype(np.float32).astype(np.float64)
    cum = np.cumsum(p)
    total = cum[-1]
    sel = min(int(np.searchsorted(cum, total * u, side="left")), size - 1)
    hi = cum / total
    lo = np.concatenate(([0.0], hi[:-1]))
    return _Replay(ids=ids, lo=lo, hi=hi, cutoff_logit=cutoff_logit, selected=int(ids[sel]))


def top_k_sorted(logits: np.ndarray, k: int = SAMPLER_TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k largest logits' ids and values, sorted by descending logit then id
    (llama.cpp's std::partial_sort leaves ties in unspecified order)."""
    k = min(k, logits.shape[1])
    part = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(logits, part, axis=1)
    ids_out = np.empty_like(part)
    vals_out = np.empty_like(vals)
    for r in range(part.shape[0]):
        order = np.lexsort((part[r], -vals[r]))
        ids_out[r], vals_out[r] = part[r][order], vals[r][order]
    return ids_out, vals_out


def _replay_slack(
    top_z: np.ndarray, z_t: float, t: int, top_ids: np.ndarray, cutoff: float, temperature: float, u: float,
    max_eps: float = 8.0, iters: int = 24,
) -> float:
    """2 x the smallest eps such that some perturbation of the logits by at most eps each
    lets the sampler (draw ``u``) pick token ``t`` -- a relaxation that bounds, for each eps,
    the lowest start and the highest end of t's cumulative interval (tokens within 2 eps of
    t may reorder; tokens within 2 eps of the support cutoff may enter or leave). For greedy
    decoding the same definition gives the plain logit gap."""
    others = top_ids != t
    z = top_z[others].astype(np.float64)
    zt = float(z_t)
    zmax = max(float(z.max(initial=zt)), zt)

    def feasible(eps: float) -> bool:
        if zt < cutoff - 2 * eps:
            return False
        possible = z >= cutoff - 2 * eps
        certain = z >= cutoff + 2 * eps
        before_certain = possible & (z > zt + 2 * eps)
        before_possible = possible & (z >= zt - 2 * eps)
        after_certain = certain & ~before_possible
        w_dn = np.exp((z - eps - zmax) / temperature)
        w_up = np.exp((z + eps - zmax) / temperature)
        wt = math.exp((zt + eps - zmax) / temperature)
        bc = float(w_dn[before_certain].sum())
        lo = bc / (bc + wt + float(w_up[possible & ~before_certain].sum()))
        bp = float(w_up[before_possible].sum()) + wt
        hi = bp / (bp + float(w_dn[after_certain].sum()))
        return lo <= u <= hi

    if feasible(0.0):
        return 0.0
    if not feasible(max_eps):
        return 2 * max_eps
    lo_e, hi_e = 0.0, max_eps
    for _ in range(iters):
        mid = 0.5 * (lo_e + hi_e)
        if feasible(mid):
            hi_e = mid
        else:
            lo_e = mid
    return 2 * hi_e


def _mass_distance(u: float, lo: float, hi: float) -> float:
    if lo <= u <= hi:
        return 0.0
    return lo - u if u < lo else u - hi


# --------------------------------------------------------------------------------------
# Fingerprint
# --------------------------------------------------------------------------------------


def build_fingerprint(
    llama: Any,
    *,
    n_batch: int,
    n_ubatch: int,
    flash_attn: bool,
    type_k: int | None = None,
    type_v: int | None = None,
    n_gpu_layers: int = 0,
    n_threads: int | None = None,
    model_sha256: str | None = None,
) -> dict[str, Any]:
    """Describe everything that shapes a provider's floats, plus an OpenAI-style
    ``system_fingerprint`` ('fp_' + 10 hex of sha256 of the canonical JSON).

    Settings measured to change outputs (NOTES.md): the build (llama.cpp version, backend,
    CPU features), n_ubatch (and n_batch when it caps n_ubatch), flash_attn, type_k/type_v,
    n_gpu_layers. Not changing outputs on this CPU: n_threads, n_ctx -- n_threads is
    recorded for information but left out of the hash.
    """
    system_info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    gpu = bool(llama_cpp.llama_supports_gpu_offload())
    upper = system_info.upper()
    if "CUDA" in upper:
        backend = "CUDA"
    elif "METAL" in upper:
        backend = "Metal"
    elif "VULKAN" in upper:
        backend = "Vulkan"
    elif "HIP" in upper or "ROCM" in upper:
        backend = "ROCm"
    elif "SYCL" in upper:
        backend = "SYCL"
    else:
        backend = "CPU"
    cpu_features = sorted(
        part.split("=")[0].strip()
        for section in system_info.split("|")
        for part in [section.split(":")[-1]]
        if part.strip().endswith("= 1")
    )
    lib = Path(llama_cpp.__file__).parent / "lib"
    lib_versions = sorted(p.name for p in lib.glob("lib*.so.*.*.*")) if lib.is_dir() else []
    effective_ubatch = min(n_batch, n_ubatch)  # llama-cpp-python caps n_ubatch at n_batch
    f16 = llama_cpp.GGML_TYPE_F16
    fp: dict[str, Any] = {
        "llama_cpp_python": llama_cpp.__version__,
        "ggml_libs": lib_versions,
        "backend": backend,
        "gpu_offload_supported": gpu,
        "cpu_features": cpu_features,
        "system_info": system_info,
        "n_batch": int(n_batch),
        "n_ubatch": int(effective_ubatch),
        "flash_attn": bool(flash_attn),
        "type_k": int(type_k if type_k is not None else f16),
        "type_v": int(type_v if type_v is not None else f16),
        "n_gpu_layers": int(n_gpu_layers),
        "model_sha256": model_sha256,
        "sampler": {"top_k": SAMPLER_TOP_K, "min_p": SAMPLER_MIN_P, "typical_p": SAMPLER_TYPICAL_P,
                    "repeat_penalty": SAMPLER_REPEAT_PENALTY},
    }
    canonical = json.dumps(fp, sort_keys=True, separators=(",", ":"))
    fp["n_threads"] = n_threads  # informational, outside the hash
    fp["system_fingerprint"] = "fp_" + hashlib.sha256(canonical.encode()).hexdigest()[:10]
    return fp


# --------------------------------------------------------------------------------------
# Scorer
# --------------------------------------------------------------------------------------


class Scorer:
    """Loads the model once and scores claimed outputs by teacher forcing.

    Not thread-safe: one ``score`` at a time per instance.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int = 2048,
        n_threads: int = 1,
        n_batch: int = 2048,
        n_ubatch: int = 512,
        flash_attn: bool = False,
        n_gpu_layers: int = 0,
        thresholds: Thresholds = DEFAULT_THRESHOLDS,
    ) -> None:
        self.model_path = str(model_path)
        if not Path(self.model_path).is_file():
            raise FileNotFoundError(f"model file not found: {self.model_path}")
        self.thresholds = thresholds
        self._llama = llama_cpp.Llama(
            model_path=self.model_path,
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_ubatch=n_ubatch,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            n_gpu_layers=n_gpu_layers,
            flash_attn=flash_attn,
            verbose=False,
        )
        self.n_ctx = self._llama.n_ctx()
        self.n_batch = min(n_batch, self.n_ctx)
        self.n_vocab = self._llama.n_vocab()
        self._ctx = self._llama.ctx
        self._vocab = llama_cpp.llama_model_get_vocab(self._llama.model)
        self.eog_tokens = np.array(
            [t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self._vocab, t)], dtype=np.int64
        )
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._chat_formatter = self._make_chat_formatter()
        self.fingerprint = build_fingerprint(
            self._llama, n_batch=self.n_batch, n_ubatch=n_ubatch, flash_attn=flash_attn,
            n_gpu_layers=n_gpu_layers, n_threads=n_threads,
        )

    # -- prompt construction ----------------------------------------------------------

    def _make_chat_formatter(self) -> Any:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self._llama.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        eos, bos = self._llama.token_eos(), self._llama.token_bos()

        def text(token: int) -> str:
            return llama_cpp.llama_vocab_get_text(self._vocab, token).decode()

        return Jinja2ChatFormatter(
            template=template,
            eos_token=text(eos) if eos != -1 else "",
            bos_token=text(bos) if bos != -1 else "",
        )

    def chat_prompt_tokens(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """Prompt tokens exactly as provider/engine.py builds them for chat requests."""
        if self._chat_formatter is None:
            raise ValueError(f"{self.model_path} has no chat template")
        formatted = self._chat_formatter(messages=[{"role": m["role"], "content": m["content"]} for m in messages])
        return self._llama.tokenize(formatted.prompt.encode(), add_bos=not formatted.added_special, special=True)

    def raw_prompt_tokens(self, prompt: str) -> list[int]:
        """Prompt tokens for a raw completion request, as provider/engine.py builds them."""
        return self._llama.tokenize(prompt.encode(), add_bos=True, special=False)

    def tokenize_output(self, text: str) -> list[int]:
        """Re-tokenize an output TEXT. Prefer the provider's token ids: re-tokenizing can
        give a different (equally valid) split than the one the model generated."""
        return self._llama.tokenize(text.encode(), add_bos=False, special=False)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._llama.detokenize(list(tokens)).decode("utf-8", errors="replace")

    def token_bytes(self, token: int) -> bytes:
        """One token's bytes, as a provider builds its output (one token at a time)."""
        return self._llama.detokenize([token])

    # -- teacher forcing --------------------------------------------------------------

    def _fresh_state(self) -> None:
        self._llama.reset()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), True)

    def forward(self, tokens: Sequence[int], first_logit_pos: int) -> np.ndarray:
        """Decode ``tokens`` from an empty KV cache and return the logits (float32,
        ``[len(tokens) - first_logit_pos, n_vocab]``) of positions ``first_logit_pos..``;
        row j predicts the token at position ``first_logit_pos + j + 1``."""
        n = len(tokens)
        if n > self.n_ctx:
            raise ValueError(f"{n} tokens exceed the scorer's context of {self.n_ctx}")
        self._fresh_state()
        rows = n - first_logit_pos
        out = np.empty((rows, self.n_vocab), dtype=np.float32)
        batch, r = self._batch, 0
        for start in range(0, n, self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            batch.n_tokens = len(chunk)
            n_out = 0
            for j, tok in enumerate(chunk):
                pos = start + j
                batch.token[j] = tok
                batch.pos[j] = pos
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = 0
                flag = pos >= first_logit_pos
                batch.logits[j] = flag
                n_out += flag
            rc = llama_cpp.llama_decode(self._ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed with {rc}")
            if n_out:
                # Outputs are stored contiguously in batch order (llama_get_logits docs).
                ptr = llama_cpp.llama_get_logits(self._ctx)
                out[r : r + n_out] = np.ctypeslib.as_array(ptr, shape=(n_out * self.n_vocab,)).reshape(
                    n_out, self.n_vocab
                )
                r += n_out
        return out

    # -- scoring ----------------------------------------------------------------------

    def score(
        self,
        prompt_tokens: Sequence[int],
        output_tokens: Sequence[int],
        *,
        temperature: float,
        top_p: float = 1.0,
        seed: int | None = None,
        finish_reason: FinishReason,
        max_tokens: int,
        completion_tokens: int | None = None,
    ) -> Verdict:
        """Score one claimed output. ``output_tokens`` excludes the final EOG token (as the
        provider's ``completion_tokens`` does). ``seed`` is required for sampled requests to
        run the seeded replay; without it only the support check runs (much weaker)."""
        t0 = time.perf_counter()
        th = self.thresholds
        greedy = temperature <= 0.0
        prompt, output = list(prompt_tokens), list(output_tokens)
        structural: list[str] = []
        if not prompt:
            raise ValueError("empty prompt")
        if any(t < 0 or t >= self.n_vocab for t in output):
            structural.append("token id outside the vocabulary")
            output = [t if 0 <= t < self.n_vocab else 0 for t in output]
        eog = set(self.eog_tokens.tolist())
        eog_inside = [i for i, t in enumerate(output) if t in eog]
        if eog_inside:
            structural.append(f"end-of-generation token inside the output at {eog_inside[:5]}")
        if len(output) > max_tokens:
            structural.append(f"{len(output)} tokens exceed max_tokens={max_tokens}")
        if finish_reason == "length" and len(output) != max_tokens:
            structural.append(f"finish 'length' with {len(output)} tokens, max_tokens={max_tokens}")
        if finish_reason not in ("stop", "length", "stop_sequence"):
            structural.append(f"unknown finish_reason {finish_reason!r}")
        if completion_tokens is not None and completion_tokens != len(output):
            structural.append(f"completion_tokens={completion_tokens} but {len(output)} tokens given")
        if finish_reason == "stop" and len(output) >= max_tokens:
            structural.append("finish 'stop' although max_tokens tokens were produced")
        if not greedy and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if len(prompt) + len(output) > self.n_ctx:
            raise ValueError("prompt + output exceed the scorer's context window")

        eos_scored = finish_reason == "stop"
        n_rows = len(output) + (1 if eos_scored else 0)
        if n_rows == 0:
            return Verdict(level="hard" if structural else "pass", reason="; ".join(structural) or "empty output",
                           greedy=greedy, n_output=0, eos_scored=False, tokens=[], rank=[], logprob=[], gap=[],
                           structural=structural, seconds=time.perf_counter() - t0)
        seq = prompt + output
        # row j = logits after seq[: len(prompt) + j], predicting output[j] (or EOS at j == n)
        logits = self.forward(seq if eos_scored else seq[:-1], len(prompt) - 1)
        assert logits.shape[0] == n_rows

        # per-row claimed token; the EOS row uses the verifier's best EOG token
        claimed = np.array(output + ([0] if eos_scored else []), dtype=np.int64)
        if eos_scored:
            claimed[-1] = int(self.eog_tokens[np.argmax(logits[-1, self.eog_tokens])])
        rows = np.arange(n_rows)
        zc = logits[rows, claimed]
        zmax = logits.max(axis=1)
        gap = (zmax - zc).astype(np.float64)
        rank = (logits > zc[:, None]).sum(axis=1) + 1
        lse = zmax + np.log(np.exp(logits - zmax[:, None]).sum(axis=1, dtype=np.float64))
        logprob = (zc - lse).astype(np.float64)
        argmax = logits.argmax(axis=1)

        verdict = Verdict(
            level="pass", reason="", greedy=greedy, n_output=len(output), eos_scored=eos_scored,
            tokens=claimed.tolist(), rank=rank.tolist(), logprob=logprob.tolist(), gap=gap.tolist(),
            structural=structural,
        )
        if greedy:
            verdict.slack = verdict.gap
            verdict.skipped_eos = [
                i for i in range(len(output)) if int(argmax[i]) in eog and gap[i] > th.greedy_soft_gap
            ]
        else:
            self._score_sampled(verdict, logits, claimed, eos_scored, temperature, top_p, seed, eog)
        verdict.level, verdict.reason = self._decide(verdict)
        verdict.seconds = time.perf_counter() - t0
        return verdict

    def _score_sampled(
        self, v: Verdict, logits: np.ndarray, claimed: np.ndarray, eos_scored: bool,
        temperature: float, top_p: float, seed: int | None, eog: set[int],
    ) -> None:
        n_rows = logits.shape[0]
        replayable = seed is not None and seed != LLAMA_DEFAULT_SEED
        u = mt19937_uniforms(seed, n_rows) if replayable else np.full(n_rows, np.nan)
        in_support: list[bool] = []
        outside: list[float] = []
        replay: list[int] = []
        match: list[bool] = []
        miss: list[float] = []
        slack: list[float] = []
        top_ids, top_z = top_k_sorted(logits)
        for i in range(n_rows):
            row = logits[i]
            ui = float(u[i]) if replayable else 0.5
            rp = _replay_row(top_ids[i], top_z[i], temperature, top_p, ui)
            last = eos_scored and i == n_rows - 1
            accept = eog if last else {int(claimed[i])}
            support = rp.ids.tolist()
            cand = [j for j, t in enumerate(support) if t in accept]
            zc = float(row[claimed[i]])
            in_support.append(bool(cand))
            outside.append(float(rp.cutoff_logit - zc))
            replay.append(rp.selected)
            match.append(rp.selected in accept)
            if not replayable:
                miss.append(0.0)
                slack.append(max(0.0, outside[-1]))
                continue
            if rp.selected in accept:
                miss.append(0.0)
                slack.append(0.0)
                continue
            miss.append(min((_mass_distance(ui, float(rp.lo[j]), float(rp.hi[j])) for j in cand),
                            default=1.0 - ui))
            targets = [int(t) for t in top_ids[i] if int(t) in accept] if last else [int(claimed[i])]
            if last and not targets:
                targets = [int(claimed[i])]
            slack.append(min(_replay_slack(top_z[i], float(row[t]), t, top_ids[i], rp.cutoff_logit,
                                           temperature, ui) for t in targets))
        v.in_support, v.outside, v.replay, v.miss, v.slack = in_support, outside, replay, miss, slack
        v.replay_match = match
        if replayable:
            v.skipped_eos = [
                i for i in range(v.n_output) if replay[i] in eog and slack[i] > self.thresholds.sampled_soft_slack
            ]
        else:
            v.notes.append("no replayable seed: support check only")

    def _decide(self, v: Verdict) -> tuple[Level, str]:
        th = self.thresholds
        if v.structural:
            return "hard", "; ".join(v.structural)
        n = len(v.slack)
        where = lambda i: "the EOS position" if (v.eos_scored and i == n - 1) else f"token {i}"  # noqa: E731
        sl = np.asarray(v.slack)
        worst = int(np.argmax(sl))
        if v.greedy:
            hard1, hard2, hard_count2, soft, soft_count = (
                th.greedy_hard_gap, th.greedy_hard_gap2, th.greedy_hard_count2, th.greedy_soft_gap, th.greedy_soft_count)
            what = "logits below the argmax"
        else:
            hard1, hard2, hard_count2, soft, soft_count = (
                th.sampled_hard_slack, th.sampled_hard_slack2, th.sampled_hard_count2, th.sampled_soft_slack,
                th.sampled_soft_count)
            what = "logits of perturbation needed for the seeded sampler to pick it"
        if sl[worst] > hard1:
            extra = f", rank {v.rank[worst]}" if v.greedy else (
                f", {v.outside[worst]:.2f} logits outside the support" if v.outside and v.outside[worst] > 0 else "")
            return "hard", f"{where(worst)}: {sl[worst]:.2f} {what} (limit {hard1}{extra})"
        n2 = int((sl > hard2).sum())
        if n2 >= hard_count2:
            return "hard", f"{n2} tokens need more than {hard2} {what}"
        ns = int((sl > soft).sum())
        if ns > soft_count:
            return "soft", f"{ns} tokens need more than {soft} {what}"
        if v.greedy:
            return "pass", f"{v.frac_rank1:.0%} of tokens at rank 1, largest gap {sl[worst]:.2f}"
        if v.notes:
            return "pass", f"all tokens inside the sampler support (no seed: support check only)"
        return "pass", f"seeded replay matched {v.replay_match_rate:.0%}, largest slack {sl[worst]:.2f}"

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None  # type: ignore[assignment]
        self._llama.close()

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
