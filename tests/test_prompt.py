"""One prompt, built the same way by a seat's engine and a juror's scorer (provider/prompt.py).

If the two drifted, a juror would teacher-force an honest seat's tokens after another prompt and
hard-fail it: honest stake burned. So every shape of the shipped model's chat template (SmolLM2's
ChatML: a default system message when the first one is not a system message, each message between
<|im_start|> and <|im_end|>, the assistant's generation prompt) and raw prompts are built through
the real engine and the real scorer, on the model file and on the F16 copy a juror loads by
default (provider.scorer.scoring_weights), and compared token for token, and with the template
written out by hand.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshmarket.mesh.protocol import Sampling
from meshmarket.provider.engine import LlamaCppEngine, default_model_path
from meshmarket.provider.scorer import Scorer, scoring_copy

Chat = list[tuple[str, str]]

#: Every branch of the template: with and without a leading system message, each role, several
#: turns, an assistant turn last, whitespace and non-ASCII text, text that spells a special token.
CHATS: dict[str, Chat] = {
    "one user message": [("user", "What is 12 times 7?")],
    "system + user": [("system", "You are terse."), ("user", "Name three colours.")],
    "multi-turn": [("user", "Hi!"), ("assistant", "Hello! How can I help?"), ("user", "Name a planet.")],
    "system + multi-turn": [("system", "Answer in one word."), ("user", "A colour?"), ("assistant", "Blue."),
                            ("user", "Another?")],
    "assistant last": [("user", "Finish the line: roses are"), ("assistant", "red,")],
    "system only": [("system", "You are a calculator.")],
    "unicode": [("system", "Réponds en français 🇫🇷"),
                ("user", "東京はどこ? مرحبا Ω≈ç√ cafe\u0301 👩\u200d🔬 \U0001f600")],
    "whitespace": [("user", "  \n\t spaced out \n\n")],
    "special-token text": [("user", "say <|im_end|> then <|im_start|>assistant")],
}
#: Empty content: the wire refuses it (mesh.protocol.Message), the builder must still agree.
EMPTY: dict[str, Chat] = {
    "empty user": [("user", "")],
    "empty system": [("system", ""), ("user", "Hi")],
    "empty assistant turn": [("user", "Hi"), ("assistant", ""), ("user", "Well?")],
}
RAWS = {
    "plain": "Once upon a time",
    "leading space": " The quick brown fox",
    "newlines": "\n\nQ: 2 + 3?\nA:",
    "unicode": "naïve café – 東京 🚀 مرحبا e\u0301",
    "special-token text": "<|im_start|>user\nhi<|im_end|>\n",
}
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chatml(messages: Chat) -> str:
    """SmolLM2's chat template, written out."""
    text = "" if messages[0][0] == "system" else f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"
    text += "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in messages)
    return text + "<|im_start|>assistant\n"


def with_specials(engine: LlamaCppEngine, text: str) -> list[int]:
    """`text` tokenized with its special-token text as the special tokens (no BOS)."""
    return engine._llama.tokenize(text.encode(), add_bos=False, special=True)


@pytest.fixture(scope="module", params=["model file", "F16 copy"])
def scorer(request, tmp_path_factory) -> Iterator[Scorer]:
    """A juror's scorer on the shipped file, and on the F16 copy LazyJudge loads by default."""
    path = default_model_path()
    if request.param == "F16 copy":
        path = scoring_copy(path, tmp_path_factory.mktemp("scoring"))
    with Scorer(path, n_ctx=512) as sc:
        yield sc


def test_the_templates_markers_are_single_tokens(engine):
    assert with_specials(engine, "<|im_start|><|im_end|>") == [1, 2]


@pytest.mark.parametrize("name", CHATS)
def test_engine_and_scorer_build_the_same_chat_prompt(engine, scorer, name):
    sampling = Sampling(messages=CHATS[name], max_tokens=8)
    tokens = engine.prompt_tokens(sampling)
    assert tokens and tokens == scorer.prompt_tokens(sampling)
    assert engine.count_prompt_tokens(sampling) == len(tokens)


@pytest.mark.parametrize("name", [n for n in CHATS if n != "special-token text"])
def test_a_chat_prompt_is_the_template_written_out(engine, name):
    sampling = Sampling(messages=CHATS[name], max_tokens=8)
    assert engine.prompt_tokens(sampling) == with_specials(engine, chatml(CHATS[name]))


def test_text_that_spells_a_special_token_is_parsed_alike(engine, scorer):
    # Chat text is tokenized with special-token parsing (the template's own markers need it), as
    # llama-cpp-python's create_chat_completion does: both sides must at least agree on it.
    sampling = Sampling(messages=CHATS["special-token text"], max_tokens=8)
    assert engine.prompt_tokens(sampling) == scorer.prompt_tokens(sampling) == with_specials(
        engine, chatml(CHATS["special-token text"]))


@pytest.mark.parametrize("name", EMPTY)
def test_empty_content_is_refused_on_the_wire_and_built_alike(engine, scorer, name):
    with pytest.raises(ValueError):
        Sampling(messages=EMPTY[name], max_tokens=8)
    tokens = engine.prompts.chat_tokens(EMPTY[name])
    assert tokens == scorer.prompts.chat_tokens(EMPTY[name]) == with_specials(engine, chatml(EMPTY[name]))


@pytest.mark.parametrize("name", RAWS)
def test_engine_and_scorer_build_the_same_raw_prompt(engine, scorer, name):
    sampling = Sampling(prompt=RAWS[name], max_tokens=8)
    tokens = engine.prompt_tokens(sampling)
    assert tokens and tokens == scorer.prompt_tokens(sampling)
    # SmolLM2 declares no BOS (tokenizer.ggml.add_bos_token false), and special-token text in a raw
    # prompt stays plain text: the prompt is the text's own tokens.
    assert tokens == engine.tokenize(RAWS[name]) and not {1, 2} & set(tokens)


def test_an_empty_raw_prompt_is_refused_on_the_wire_and_built_alike(engine, scorer):
    with pytest.raises(ValueError):
        Sampling(prompt="", max_tokens=8)
    assert engine.prompts.raw_tokens("") == scorer.prompts.raw_tokens("") == []
