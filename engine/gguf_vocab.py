"""A model's tokenizer as llama.cpp reads it from a GGUF (``tokenizer.ggml.*``).

tuneloop itself never tokenizes with llama.cpp: prompts are encoded and answers decoded with the
model's own ``tokenizer.json`` (``engine.chat_tokenizer``), and llama.cpp only sees token ids. The
vocabulary in the GGUF is what llama.cpp needs to load the file and what Ollama or LM Studio use
when the file leaves tuneloop.

The bundled SmolLM2 vocabulary (which the test models reuse) is copied from the bundled GGUF, as
llama.cpp's converter wrote it. Any other is written from the tokenizer's own files with the
``gguf`` package's readers: byte-level BPE (``BpeVocab``: Llama 3, Qwen2, GPT-2 style) or
SentencePiece-style BPE with byte fallback (``LlamaHfVocab``: Mistral, Phi-3, Gemma; it has no piece
scores, so llama.cpp's own tokenizer may split text differently from the model's). llama.cpp picks
its pre-tokenizer regex by name; tuneloop knows the names of the families below and writes
``default`` otherwise, which only matters to tools that tokenize with the GGUF itself.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from pathlib import Path
from typing import Any

from engine.modelstore import bundled_gguf_path
from tuneloop.core.errors import InvalidInputError

log = logging.getLogger(__name__)

BUNDLED_VOCAB_SIZE = 49152  # SmolLM2's tokens (the file itself is what a match is checked against)
# model_type -> llama.cpp's pre-tokenizer name for its byte-level BPE vocabulary
BPE_PRE_TOKENIZERS = {"llama": "llama-bpe", "qwen2": "qwen2"}


def add_vocabulary(writer: Any, tokenizer: Any, model_type: str, n_vocab: int) -> None:
    """Write ``tokenizer`` (a transformers tokenizer), padded to the model's ``n_vocab`` embedding rows,
    with its chat template and special ids."""
    bundled = _bundled_reader_if_same(tokenizer)
    if bundled is not None:
        _copy_bundled(writer, bundled, tokenizer)
    else:
        with tempfile.TemporaryDirectory(prefix="tuneloop-vocab-") as files:
            tokenizer.save_pretrained(files)
            _write_from_files(writer, Path(files), model_type, n_vocab)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


@functools.lru_cache(maxsize=1)
def _bundled_reader() -> Any:
    """The bundled GGUF, parsed once a process (``GGUFReader`` takes seconds on its ~300k fields)."""
    import gguf

    return gguf.GGUFReader(str(bundled_gguf_path()))


def _bundled_reader_if_same(tokenizer: Any) -> Any:
    """A reader of the bundled GGUF when ``tokenizer`` has its very tokens, else None."""
    if len(tokenizer) != BUNDLED_VOCAB_SIZE:  # not SmolLM2's: no need to parse the file to know
        return None
    reader = _bundled_reader()
    tokens = reader.fields["tokenizer.ggml.tokens"]
    if len(tokens.data) != len(tokenizer):
        return None
    return reader if tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))) == tokens.contents() else None


def _copy_bundled(writer: Any, reader: Any, tokenizer: Any) -> None:
    """The bundled GGUF's vocabulary (same tokens), with the tokenizer's own special ids."""
    import gguf

    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.ggml.") or key.endswith("_token_id"):
            continue
        kind = field.types[0]
        sub = field.types[1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), kind, sub)
    for attr, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                      ("unk_token_id", writer.add_unk_token_id), ("pad_token_id", writer.add_pad_token_id)):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            add(int(value))


def _write_from_files(writer: Any, files: Path, model_type: str, n_vocab: int) -> None:
    import gguf
    from gguf.vocab import BpeVocab, LlamaHfVocab, SpecialVocab

    vocab = None
    for reader in (BpeVocab, LlamaHfVocab):
        try:
            vocab = reader(files)
            break
        except (FileNotFoundError, TypeError, KeyError, ValueError):
            continue
    if vocab is None:
        raise InvalidInputError("llama.cpp export reads byte-level BPE and SentencePiece-style BPE tokenizers "
                                "(tokenizer.json); this model's tokenizer is neither.")
    tokens, scores, types = (list(column) for column in zip(*vocab.all_tokens()))
    if len(tokens) > n_vocab:
        raise InvalidInputError(f"the tokenizer has {len(tokens)} tokens but the model only {n_vocab} embeddings.")
    for i in range(len(tokens), n_vocab):  # embedding rows no token uses, as convert_hf_to_gguf pads them
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model(vocab.tokenizer_model)
    pre = BPE_PRE_TOKENIZERS.get(model_type, "default") if vocab.tokenizer_model == "gpt2" else "default"
    if vocab.tokenizer_model == "gpt2" and pre == "default":
        log.warning("llama.cpp's pre-tokenizer for a %s vocabulary is unknown to tuneloop; the GGUF says "
                    "'default' (tuneloop is unaffected; tools that tokenize with the GGUF may split text "
                    "differently)", model_type)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = SpecialVocab(files, load_merges=vocab.tokenizer_model == "gpt2", n_vocab=len(tokens))
    special.chat_template = None  # written from the tokenizer itself by the caller
    special.add_to_gguf(writer, quiet=True)
