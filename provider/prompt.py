"""The prompt a model is fed for a request: the token ids a seat generates from and a juror
teacher-forces, built in this one place.

A seat's engine (provider/engine.py) and a juror's scorer (provider/scorer.py) each load the model
on their own `llama_cpp.Llama` (other batch settings, often another file: the juror's F16 copy), and
each asks a `PromptBuilder` over it. Were the prompt built twice, the two could drift (a template
flag, a BOS, `special` parsing), and a juror would score an honest seat's tokens after the wrong
prompt: a hard fail, honest stake burned. tests/test_prompt.py builds every shape of the model's
chat template through both and checks the tokens are equal, and equal to the template written out.

* Chat `messages`: the model's own chat template (GGUF `tokenizer.chat_template`) rendered by
  llama-cpp-python's `Jinja2ChatFormatter` with the model's BOS and EOS texts and the generation
  prompt: the construction llama-cpp-python uses for "chat_template.default", so the prompt is
  exactly what `create_chat_completion` would feed the model. Special-token text is parsed as
  special tokens (the template's markers must be), with BOS added unless the template wrote it.
* A raw `prompt`: BOS (if the model adds one), then the text with special-token text kept plain,
  so "<|im_end|>" typed into a raw prompt is never a control token.

Tokenizing only reads the vocabulary: no model lock is needed, so a request can be sized and
refused while another job runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from meshmarket.mesh.errors import InferenceError
from meshmarket.mesh.protocol import Sampling


class PromptBuilder:
    """The prompt token ids of requests for the model loaded in `llama` (a `llama_cpp.Llama`)."""

    def __init__(self, llama: Any, model_path: str) -> None:
        self._llama = llama
        self.model_path = model_path
        self._formatter = _chat_formatter(llama)

    def tokens(self, sampling: Sampling) -> list[int]:
        """What the model is fed for `sampling` (a checked request: messages or a prompt, never both)."""
        if sampling.messages is None:
            assert sampling.prompt is not None
            return self.raw_tokens(sampling.prompt)
        return self.chat_tokens((m.role, m.content) for m in sampling.messages)

    def chat_tokens(self, messages: Iterable[tuple[str, str]]) -> list[int]:
        """`messages` as (role, content) rendered by the model's chat template, then tokenized."""
        if self._formatter is None:
            raise InferenceError(f"{self.model_path} has no chat template", "send a raw prompt instead of messages")
        formatted = self._formatter(messages=[{"role": role, "content": content} for role, content in messages])
        return self._llama.tokenize(formatted.prompt.encode(), add_bos=not formatted.added_special, special=True)

    def raw_tokens(self, prompt: str) -> list[int]:
        # special=False: text such as "<|im_end|>" in a raw prompt stays plain text.
        return self._llama.tokenize(prompt.encode(), add_bos=True, special=False)


def _chat_formatter(llama: Any) -> Any:
    """The model's chat template with its BOS and EOS texts, or None if the file has no template."""
    import llama_cpp  # deferred, as in provider.engine: loading llama.cpp is heavy
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        return None
    vocab = llama_cpp.llama_model_get_vocab(llama.model)

    def text(token: int) -> str:
        return "" if token == -1 else llama_cpp.llama_vocab_get_text(vocab, token).decode()

    return Jinja2ChatFormatter(template=template, eos_token=text(llama.token_eos()), bos_token=text(llama.token_bos()))
