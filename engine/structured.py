"""Constrained decoding: a reply that must match a grammar (JSON, a JSON schema, a tool call).

Both local engines use llama.cpp's grammar sampler: a GBNF grammar (built from a JSON schema by
llama-cpp-python's port of llama.cpp's ``json-schema-to-grammar``) over the model's vocabulary sets
the logit of every token that cannot continue a match to -inf before the engine samples. The
llama.cpp engine hands it its model's vocabulary; the transformers engine loads the same vocabulary
from a GGUF without weights (``vocab_only``), which works while the model's tokenizer is the bundled
SmolLM2 one (the only vocabulary tuneloop writes GGUFs for): any other is refused, naming
``response_format``.

llama.cpp's converter ignores JSON-schema keywords it cannot enforce; ``json_schema_grammar`` refuses
them instead (400 naming the keyword's place in the schema), so a reply never silently breaks a
schema the caller relied on.
"""

from __future__ import annotations

import ctypes
import json
import re
import weakref
from collections.abc import Iterable
from functools import cache
from typing import Any

import numpy as np

from engine.llamacpp_model import _init_backend
from engine.modelstore import bundled_gguf_path
from tuneloop.core.errors import InvalidInputError

# Keywords the converter turns into grammar rules, and annotations that constrain nothing.
_ENFORCED = {"type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems",
             "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions", "pattern",
             "format", "minLength", "maxLength"}
_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
                "readOnly", "writeOnly"}
_FORMATS = {"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
_LOOSE_CHAR, _JSON_CHAR = r'char ::= [^"\\] |', r'char ::= [^"\\\x7F\x00-\x1F] |'
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems")
MAX_REPEAT = 1000  # the most characters or items a count may ask for
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


class UnenforceableSchemaError(InvalidInputError):
    """A part of the schema the grammar cannot enforce; ``param`` names where it is."""


def json_schema_grammar(schema: Any, param: str = "response_format.json_schema.schema") -> str:
    """The GBNF grammar of ``schema``. Raises ``UnenforceableSchemaError`` naming the first keyword
    the grammar would not enforce (e.g. ``...schema.properties.age.minimum``)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    if not isinstance(schema, dict):
        raise UnenforceableSchemaError("the schema must be a JSON object", param=param)
    for path, keyword in _unenforced(schema, param):
        raise UnenforceableSchemaError(f"the keyword {keyword!r} cannot be enforced while decoding; remove it "
                                       f"(enforced: {', '.join(sorted(_ENFORCED))}; counts up to {MAX_REPEAT})",
                                       param=f"{path}.{keyword}")
    try:
        grammar = json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # noqa: BLE001  (the converter asserts, indexes and recurses on what it is given)
        raise UnenforceableSchemaError(f"the schema cannot be turned into a grammar: {exc}", param=param) from exc
    # this converter lets a string hold raw control characters, which strict JSON parsers refuse
    return grammar.replace(_LOOSE_CHAR, _JSON_CHAR)


def json_object_grammar() -> str:
    """Any JSON object, with at most one space between tokens (so a small model cannot run away in
    whitespace, as JSON_GBNF's newlines and indentation let it)."""
    return json_schema_grammar({"type": "object"}, param="response_format")


def _unenforced(schema: Any, path: str) -> Iterable[tuple[str, str]]:
    """(path, keyword) of every keyword in ``schema`` and its subschemas that is not enforced."""
    if not isinstance(schema, dict):
        return
    for keyword, value in schema.items():
        if keyword in _ANNOTATIONS:
            continue
        if keyword not in _ENFORCED or (keyword == "format" and value not in _FORMATS):
            yield path, keyword
        elif keyword in _COUNTS and not (isinstance(value, int) and 0 <= value <= MAX_REPEAT):
            yield path, keyword  # llama.cpp unrolls a repetition into that many rules
        elif keyword == "pattern" and not (isinstance(value, str) and _pattern_repeats(value) <= MAX_REPEAT):
            yield path, keyword
        elif keyword in _SUBSCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                yield from _unenforced(sub, f"{path}.{keyword}.{name}")
        elif keyword in _SUBSCHEMA_LISTS and isinstance(value, list):
            for i, sub in enumerate(value):
                yield from _unenforced(sub, f"{path}.{keyword}.{i}")
        elif keyword in ("items", "additionalProperties") and isinstance(value, dict):
            yield from _unenforced(value, f"{path}.{keyword}")


def _pattern_repeats(pattern: str) -> int:
    """The product of a regular expression's counted repetitions (``{3}``, ``{2,40}``): what nested
    counts can multiply into, unrolled."""
    product = 1
    for low, high in re.findall(r"\{(\d+)(?:,(\d*))?\}", pattern):
        product *= max(int(low), int(high or 0), 1)
    return product


# --- the grammar sampler -------------------------------------------------------------------------
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # llama_token_data


class GrammarVocab:
    """A llama.cpp vocabulary the grammar sampler reads token texts from, and which of its tokens end
    a reply (the engine's). The model that owns ``vocab`` must outlive this object."""

    def __init__(self, lc: Any, vocab: Any, eos_ids: set[int]):
        self.lc, self.vocab, self.eos_ids = lc, vocab, set(eos_ids)
        self.n_vocab = lc.llama_vocab_n_tokens(vocab)
        # end-of-generation tokens the engine would not stop on: never allowed under a grammar
        self.foreign_eog = np.array([t for t in range(self.n_vocab)
                                     if lc.llama_vocab_is_eog(vocab, t) and t not in self.eos_ids], dtype=np.int64)


class GrammarMask:
    """One reply's grammar: ``mask`` the logits before sampling, ``accept`` the token chosen."""

    def __init__(self, vocab: GrammarVocab, gbnf: str, param: str = "response_format"):
        lc = vocab.lc
        self.vocab = vocab
        self.sampler = lc.llama_sampler_init_grammar(vocab.vocab, gbnf.encode(), b"root")
        if not self.sampler:
            raise InvalidInputError("llama.cpp could not parse the grammar built for this request", param=param)
        self._free = weakref.finalize(self, lc.llama_sampler_free, self.sampler)
        self.data = np.zeros(vocab.n_vocab, dtype=_TOKEN_DATA)
        self.array = lc.llama_token_data_array(
            data=self.data.ctypes.data_as(ctypes.POINTER(lc.llama_token_data)), size=vocab.n_vocab,
            selected=-1, sorted=False)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """A copy of ``logits`` with every token the grammar forbids next at -inf."""
        n = self.vocab.n_vocab
        self.data["id"] = np.arange(n, dtype=np.int32)
        self.data["logit"] = logits[:n]
        self.array.size, self.array.selected, self.array.sorted = n, -1, False
        self.vocab.lc.llama_sampler_apply(self.sampler, ctypes.byref(self.array))
        masked = np.full(logits.shape[-1], -np.inf, dtype=np.float32)
        masked[self.data["id"][: self.array.size]] = self.data["logit"][: self.array.size]
        masked[self.vocab.foreign_eog] = -np.inf
        return masked

    def accept(self, token: int) -> None:
        if token not in self.vocab.eos_ids:  # the reply ends there; llama.cpp asserts on a non-final EOG
            self.vocab.lc.llama_sampler_accept(self.sampler, token)

    def close(self) -> None:
        self._free()


def vocab_for_tokenizer(tokenizer: Any, eos_ids: set[int]) -> GrammarVocab:
    """The bundled SmolLM2 vocabulary (from its GGUF, without weights) for a transformers model whose
    tokenizer is the same; anything else is a 400 naming ``response_format``."""
    lc, model = _bundled_vocab_model()
    vocab = lc.llama_model_get_vocab(model)
    ours = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    theirs = [lc.llama_vocab_get_text(vocab, t).decode("utf-8", errors="replace")
              for t in range(lc.llama_vocab_n_tokens(vocab))]
    if ours != theirs:
        raise InvalidInputError("the transformers engine enforces grammars with llama.cpp over the bundled SmolLM2 "
                                "vocabulary, and this model's tokenizer differs; serve it with "
                                "TUNELOOP_SERVING_BACKEND=llamacpp", param="response_format")
    return GrammarVocab(lc, vocab, eos_ids)


@cache
def _bundled_vocab_model() -> tuple[Any, Any]:
    """The bundled GGUF loaded without weights, once per process (kept for the process's life)."""
    lc = _init_backend()
    params = lc.llama_model_default_params()
    params.vocab_only = True
    model = lc.llama_model_load_from_file(str(bundled_gguf_path()).encode(), params)
    if not model:
        raise RuntimeError("llama.cpp could not read the bundled GGUF's vocabulary")
    return lc, model
