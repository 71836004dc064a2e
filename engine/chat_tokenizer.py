"""A model's tokenizer and chat template without transformers: what the llama.cpp engine serves with.

Importing transformers imports torch, and loading a tokenizer through it costs a serving process
~370 MB before a single weight is read; llama.cpp needs neither. This reads the same files
``save_pretrained`` wrote (``tokenizer.json`` for the Rust ``tokenizers`` library, the chat template
from ``chat_template.jinja`` or ``tokenizer_config.json``, the special tokens and
``generation_config.json``) and renders the template the way transformers does (a sandboxed jinja2
environment with ``trim_blocks`` and ``lstrip_blocks``), so both give the same prompt ids and the
same text (``tests/test_chat_tokenizer.py`` compares them).

It offers the part of the transformers tokenizer interface that ``engine.prompting``,
``engine.text_stream`` and serving use: ``apply_chat_template``, calling it on text, ``decode``,
``eos_token``/``eos_token_id`` and ``chat_template``.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from engine.modelstore import ModelNotFoundError

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


def _template_environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


class ChatTokenizer:
    """The tokenizer of a saved model directory, served without transformers."""

    def __init__(self, model_dir: Path):
        tokenizer_file = model_dir / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ModelNotFoundError(f"{model_dir} has no tokenizer.json; the model directory is incomplete.")
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        config_file = model_dir / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        template_file = model_dir / "chat_template.jinja"
        self.chat_template: str | None = (template_file.read_text() if template_file.is_file()
                                          else config.get("chat_template"))
        self.special_tokens = {name: _token_text(config.get(name)) for name in SPECIAL_TOKEN_NAMES}
        self.eos_token = self.special_tokens["eos_token"]
        self.eos_token_id = self._tokenizer.token_to_id(self.eos_token) if self.eos_token else None
        self._template = _template_environment().from_string(self.chat_template) if self.chat_template else None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, str]], *, tokenize: bool = True,
                            add_generation_prompt: bool = False) -> str | list[int]:
        if self._template is None:
            raise ModelNotFoundError("This model has no chat template; serve it with a chat model's tokenizer files.")
        text = self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     tools=None, documents=None,
                                     **{k: v for k, v in self.special_tokens.items() if v is not None})
        return self(text, add_special_tokens=False)["input_ids"] if tokenize else text


def eos_ids(model_dir: Path, tokenizer: ChatTokenizer) -> set[int]:
    """The ids that end a reply, read from ``generation_config.json`` (see ``end_of_reply_ids``)."""
    config_file = model_dir / "generation_config.json"
    eos = json.loads(config_file.read_text()).get("eos_token_id") if config_file.is_file() else None
    return end_of_reply_ids(eos, tokenizer)


def end_of_reply_ids(generation_eos: int | list[int] | None, tokenizer: Any) -> set[int]:
    """The ids that end a reply: the generation config's ``eos_token_id`` (one or a list) and the
    tokenizer's end-of-sequence token, as transformers' ``generate`` stops on them. The one definition
    for every engine and the trainer; ``tokenizer`` is this module's or a transformers one."""
    found = [*generation_eos] if isinstance(generation_eos, list) else [generation_eos]
    return {i for i in [*found, tokenizer.eos_token_id] if i is not None}


def padding_id(tokenizer: Any, ends: set[int] = frozenset()) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its end-of-sequence token, else the
    lowest of ``ends`` (``end_of_reply_ids``). Padded positions are masked, so only its presence matters."""
    for candidate in (getattr(tokenizer, "pad_token_id", None), tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return min(ends)
