"""The teacher-forced scorer and the juror's judge on fixed cases with the real model.

Honest outputs come from the real engine (provider.engine) under three configurations whose outputs
really differ (the shipped settings, a single-row prefill, flash attention); cheats from the real
engine on requantized copies of the shipped file (made here with llama.cpp's quantize API), and by
altering honest outputs. Each test asserts a verdict, never a rate (bench/verify.py measures those)
and never a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from eth_utils import keccak

from meshmarket.mesh.market import HARD, PASS
from meshmarket.mesh.protocol import Sampling
from meshmarket.provider import engine as engine_module
from meshmarket.provider.engine import GenerationResult, LlamaCppEngine, default_model_path
from meshmarket.provider.judge import LazyJudge, ScorerJudge, spell
from meshmarket.provider.scorer import FinishReason, Rule, Scorer, decide, mt19937_uniforms, replay_row, replay_slack

QUESTION = "What is 12 times 7?"
GREEDY = Sampling(messages=[("user", QUESTION)], max_tokens=48)
SAMPLED = Sampling(messages=[("user", QUESTION)], max_tokens=48, temperature_milli=1000, seed=2006)
OTHER = Sampling(messages=[("user", "What is the capital of France? Answer in one sentence.")], max_tokens=48)


# ------------------------------------------------------------------------------ pure functions


def test_mt19937_draws_are_std_mt19937s():
    # std::mt19937(5489) starts 3499211612, 581869302; a double draw takes two of them.
    assert mt19937_uniforms(5489, 1)[0] == (3499211612 + 581869302 * 2**32) / 2**64


def test_replay_follows_the_protocol_sampler_chain():
    z = np.array([2.0, 1.0, 0.0, -10.0], dtype=np.float32)  # -10 is under min-p (2 + ln 0.05)
    ids = np.arange(4)
    p = np.exp(z[:3] - 2.0)
    p /= p.sum()
    assert replay_row(ids, z, 1.0, 1.0, float(p[0]) + 1e-6).selected == 1
    assert len(replay_row(ids, z, 1.0, 1.0, 0.5).ids) == 3
    assert replay_row(ids, z, 1.0, 1.0, 0.01).selected == 0
    assert len(replay_row(ids, z, 1.0, 0.5, 0.99).ids) == 1  # top-p 0.5 keeps token 0 (mass 0.665)


def test_replay_slack_is_zero_for_the_replayed_token_and_the_gap_scale_otherwise():
    z = np.array([3.0, 1.0, 0.0], dtype=np.float32)
    cutoff = 3.0 + math.log(0.05)
    assert replay_slack(z, np.arange(3), 3.0, 0, cutoff, 1.0, 0.1) == 0.0
    assert 0 < replay_slack(z, np.arange(3), 1.0, 1, cutoff, 1.0, 0.1) < 4.5


def test_rule_levels_and_counts_that_grow_with_length():
    rule = Rule()
    assert decide([0.0, 0.3, 0.5], rule)[0] == "pass"
    assert decide([0.0, 0.6, 0.7], rule)[0] == "soft"  # two positions over 0.5
    assert decide([1.2], rule)[0] == "soft"
    assert decide([2.1], rule)[0] == "hard"
    assert decide([1.1, 1.2, 1.3], rule)[0] == "hard"  # three over 1.0
    long = [0.0] * 2048
    long[5] = long[900] = 0.7
    assert decide(long, rule)[0] == "pass"  # two over 0.5 in 2,048 positions: the count is 4 there


# ------------------------------------------------------------------------------ fixtures


@dataclass(frozen=True)
class Claim:
    sampling: Sampling
    result: GenerationResult

    @property
    def tokens(self) -> list[int]:
        return list(self.result.tokens)

    @property
    def text_hash(self) -> bytes:
        return keccak(self.result.text.encode())


def _engine(path: Path, **settings: object) -> LlamaCppEngine:
    """The provider's own engine with other determinism settings (they are module constants)."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in settings.items():
            mp.setattr(engine_module, name, value)
        return LlamaCppEngine(path, n_ctx=512, n_threads=1)


def _quantized(src: Path, dst: Path, ftype: str) -> Path:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.allow_requantize = True
    params.nthread = 1
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) == 0
    return dst


@pytest.fixture(scope="module")
def scorer() -> Iterator[Scorer]:
    with Scorer(default_model_path()) as sc:
        yield sc


@pytest.fixture(scope="module")
def claims(engine, tmp_path_factory) -> dict[str, Claim]:
    """Every generated output the tests judge, made once."""
    out: dict[str, Claim] = {}

    def run(eng, name: str, sampling: Sampling) -> None:
        out[name] = Claim(sampling, eng.generate(sampling).run())

    run(engine, "A greedy", GREEDY)
    run(engine, "A sampled", SAMPLED)
    run(engine, "A other prompt", OTHER)
    ship = default_model_path()
    for config, settings in (("B", {"N_BATCH": 1, "N_UBATCH": 1}), ("C", {"FLASH_ATTN": True})):
        eng = _engine(ship, **settings)
        try:
            assert eng.build.fingerprint != engine.build.fingerprint
            run(eng, f"{config} greedy", GREEDY)
            if config == "B":
                run(eng, "B sampled", SAMPLED)
        finally:
            eng.close()
    models = tmp_path_factory.mktemp("requantized")
    for ftype, sampling in (("Q2_K", GREEDY), ("Q4_0", SAMPLED)):
        eng = LlamaCppEngine(_quantized(ship, models / f"{ftype}.gguf", ftype), n_ctx=512, n_threads=1)
        try:
            run(eng, f"{ftype} {'greedy' if sampling is GREEDY else 'sampled'}", sampling)
        finally:
            eng.close()
    return out


@pytest.fixture(scope="module")
def judge(scorer) -> ScorerJudge:
    return ScorerJudge(scorer)


def level(scorer: Scorer, sampling: Sampling, tokens: list[int], finish: FinishReason, *,
          max_tokens: int | None = None, completion_tokens: int | None = None) -> str:
    """The scorer's verdict on `tokens` claimed for `sampling` with this finish."""
    return scorer.score(scorer.prompt_tokens(sampling), tokens, temperature=sampling.temperature,
                        top_p=sampling.top_p, seed=sampling.seed, finish_reason=finish,
                        max_tokens=max_tokens or sampling.max_tokens, completion_tokens=completion_tokens).level


def finish_of(claim: Claim) -> FinishReason:
    return "length" if claim.result.finish_reason == "length" else "stop"


# ------------------------------------------------------------------------------ honest outputs


@pytest.mark.parametrize("config", ["B", "C"])
def test_honest_outputs_of_another_configuration_pass_both_ways(claims, judge, config):
    """The engine's settings and another honest configuration answer differently, and a juror
    passes both: the configurations really differ (other bytes, other fingerprints)."""
    mine, theirs = claims["A greedy"], claims[f"{config} greedy"]
    assert mine.tokens != theirs.tokens
    for claim in (mine, theirs):
        assert judge.verdict(claim.sampling, claim.tokens, claim.text_hash)[0] == PASS


def test_honest_sampled_outputs_of_two_configurations_pass(claims, judge):
    mine, theirs = claims["A sampled"], claims["B sampled"]
    assert mine.tokens != theirs.tokens
    for claim in (mine, theirs):
        verdict, reason = judge.verdict(claim.sampling, claim.tokens, claim.text_hash)
        assert verdict == PASS and "seeded replay" in reason


def test_an_honest_output_cut_at_a_stop_string_passes(engine, claims, judge):
    base = claims["A greedy"].result.text
    stop = base[len(base) // 3:][:4].strip() or base[-3:]
    sampling = GREEDY.model_copy(update={"stop": (stop,)})
    result = engine.generate(sampling).run()
    text, stopped_at = spell(list(result.tokens), sampling.stop, engine.piece)
    assert text == result.text and stopped_at == len(result.tokens) - 1
    assert judge.verdict(sampling, list(result.tokens), keccak(result.text.encode()))[0] == PASS


def test_a_verdict_does_not_depend_on_what_was_scored_before(scorer, claims):
    """The scorer reuses the cache of the previous claim (same prompt, same leading tokens): its
    rows are bit-identical to a fresh pass, so jurors scoring seats in any order vote alike."""
    a, b = claims["A greedy"], claims["B greedy"]
    prompt = scorer.prompt_tokens(GREEDY)
    scorer.reset()
    fresh = scorer.forward(prompt + a.tokens, len(prompt) - 1).copy()
    scorer.forward(prompt + b.tokens, len(prompt) - 1)
    again = scorer.forward(prompt + a.tokens, len(prompt) - 1)
    assert np.array_equal(fresh, again)
    assert np.array_equal(fresh[:-3], scorer.forward(prompt + a.tokens[:-3], len(prompt) - 1))


# ------------------------------------------------------------------------------ cheats


def test_a_requantized_copy_is_hard(claims, scorer):
    for name in ("Q2_K greedy", "Q4_0 sampled"):
        claim = claims[name]
        assert level(scorer, claim.sampling, claim.tokens, finish_of(claim)) == "hard", name


def test_a_sampled_output_claimed_as_greedy_is_hard(claims, scorer):
    claim = claims["A sampled"]
    assert level(scorer, GREEDY, claim.tokens, finish_of(claim)) == "hard"


def test_a_greedy_output_claimed_as_sampled_is_not_paid(claims, scorer):
    claim = claims["A greedy"]
    assert level(scorer, SAMPLED, claim.tokens, finish_of(claim)) in ("soft", "hard")


def test_a_sampled_output_with_another_seed_is_hard(claims, scorer):
    claim = claims["A sampled"]
    wrong = SAMPLED.model_copy(update={"seed": SAMPLED.seed + 777})
    assert level(scorer, wrong, claim.tokens, finish_of(claim)) == "hard"


def test_a_truncated_output_is_hard(claims, judge):
    claim = claims["A greedy"]
    cut = claim.tokens[:20]
    text_hash = keccak(spell(cut, (), judge.scorer.token_bytes)[0].encode())
    verdict, reason = judge.verdict(GREEDY, cut, text_hash)  # 20 of 48 tokens: finish "stop"
    assert verdict == HARD and "end-of-sequence" in reason


def _continue(scorer: Scorer, prompt: list[int], tokens: list[int], n: int) -> list[int]:
    """The model's own best tokens after `tokens`, never an end-of-generation token."""
    out = list(tokens)
    for _ in range(n):
        row = scorer.forward(prompt + out, len(prompt) + len(out) - 1)[-1].copy()
        row[scorer.eog_tokens] = -np.inf
        out.append(int(row.argmax()))
    return out[len(tokens):]


def test_an_output_extended_past_its_end_is_hard(claims, scorer):
    claim = claims["B greedy"]  # ends on an end-of-generation token well before max_tokens
    assert finish_of(claim) == "stop" and len(claim.tokens) < 40
    prompt = scorer.prompt_tokens(GREEDY)
    longer = claim.tokens + _continue(scorer, prompt, claim.tokens, 6)
    assert level(scorer, GREEDY, longer, "stop") == "hard"
    padded = claim.tokens + [claim.tokens[-1]] * (GREEDY.max_tokens - len(claim.tokens))
    assert level(scorer, GREEDY, padded, "length") == "hard"


def test_wrong_token_counts_are_hard(claims, scorer):
    claim = claims["A greedy"]  # 48 tokens, finish "length"
    toks = claim.tokens
    assert finish_of(claim) == "length"
    assert level(scorer, GREEDY, toks[:-3], "length") == "hard"  # 'length' with fewer than max_tokens
    assert level(scorer, GREEDY, toks, "length", completion_tokens=len(toks) + 5) == "hard"
    assert level(scorer, GREEDY, toks, "length", max_tokens=len(toks) - 1) == "hard"
    assert level(scorer, GREEDY, toks, "stop") == "hard"  # 'stop' after max_tokens tokens
    eog = int(scorer.eog_tokens[0])
    assert level(scorer, GREEDY, toks[:5] + [eog] + toks[6:10], "stop") == "hard"


def test_random_tokens_are_hard(scorer):
    toks = np.random.default_rng(7).integers(100, 40_000, GREEDY.max_tokens).tolist()
    assert level(scorer, GREEDY, toks, "length") == "hard"
    assert level(scorer, SAMPLED, toks, "length") == "hard"


def test_another_prompts_answer_is_hard(claims, scorer):
    claim = claims["A other prompt"]
    assert claim.tokens != claims["A greedy"].tokens
    assert level(scorer, GREEDY, claim.tokens, finish_of(claim)) == "hard"


def test_a_good_prefix_with_cheap_filler_is_hard(claims, scorer):
    for name, sampling in (("A greedy", GREEDY), ("A sampled", SAMPLED)):
        toks = claims[name].tokens[:8]
        filler = toks + [toks[-1]] * (sampling.max_tokens - len(toks))
        assert level(scorer, sampling, filler, "length") == "hard", name


def test_a_text_its_tokens_do_not_spell_is_hard(claims, judge):
    claim = claims["A greedy"]
    verdict, reason = judge.verdict(GREEDY, claim.tokens, keccak(claim.result.text.upper().encode()))
    assert verdict == HARD and "not what its tokens say" in reason


def test_tokens_after_a_stop_string_are_hard(claims, judge):
    claim = claims["A greedy"]
    text = claim.result.text
    stop = text[5:9]
    sampling = GREEDY.model_copy(update={"stop": (stop,)})
    cut = text[:text.find(stop)]
    verdict, reason = judge.verdict(sampling, claim.tokens, keccak(cut.encode()))
    assert verdict == HARD and "stop string" in reason


def test_a_token_outside_the_vocabulary_is_hard(judge):
    verdict, _ = judge.verdict(GREEDY, [1, 2, judge.scorer.n_vocab + 5], keccak(b""))
    assert verdict == HARD


def test_judged_seats_are_scored_once(claims, scorer):
    """The seats of a job are judged one after another: an output equal to one already judged is not
    scored again (the scorer's cache makes the verdicts independent of the order, above)."""
    judge = ScorerJudge(scorer)
    seats = [claims["A greedy"], claims["Q2_K greedy"], claims["A greedy"], claims["B greedy"]]
    verdicts = [judge.verdict(c.sampling, c.tokens, c.text_hash)[0] for c in seats]
    assert verdicts == [PASS, HARD, PASS, PASS]
    assert len(judge._memory) == 3


# ------------------------------------------------------------------------------ the juror's weights


def test_a_juror_scores_with_an_f16_copy_of_the_same_weights_and_votes_alike(claims, judge):
    """LazyJudge loads an F16 copy of the model file (made once in the cache, cheaper to score with):
    the same votes as the file itself on honest outputs of two configurations and on cheats."""
    lazy = LazyJudge(str(default_model_path()))
    seats = [claims["A greedy"], claims["C greedy"], claims["A sampled"], claims["Q2_K greedy"],
             claims["Q4_0 sampled"]]
    votes = [lazy.verdict(c.sampling, c.tokens, c.text_hash)[0] for c in seats]
    assert lazy._judge is not None and lazy._judge.scorer.model_path.endswith(".F16.gguf")
    assert votes == [PASS, PASS, PASS, HARD, HARD]
    assert votes == [judge.verdict(c.sampling, c.tokens, c.text_hash)[0] for c in seats]
