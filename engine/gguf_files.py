"""GGUF files for llama.cpp, written with the ``gguf`` package: a whole model from a transformers
Llama (any version: the base, or base + LoRA merged), so llama.cpp serves and the gates ask exactly
the weights transformers trained, and so a version can leave tuneloop for Ollama or LM Studio.

Tensor names and the rotary permutation of the query/key projections follow llama.cpp's
``convert_hf_to_gguf.py`` (transformers un-permutes them when it loads a GGUF; we permute them
back). The tokenizer (vocabulary, merges, special ids) is copied from the bundled SmolLM2 GGUF when
the model uses that vocabulary, which the bundled model and the test model do. Files are written
under a temporary name and renamed into place.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.child_process import last_line, run_module
from engine.modelstore import BUNDLED_DIR_NAME, ModelNotFoundError, bundled_gguf_path
from engine.protocol import VersionSpec
from tuneloop.core.errors import InvalidInputError
from tuneloop.core.settings import Settings

log = logging.getLogger(__name__)

# transformers name (after "model.") -> llama.cpp name
_LAYER_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
QUANTIZATIONS = ("F32", "F16", "Q8_0", "Q4_1")
# How engine.gguf_writer (the child that merges and writes) says what went wrong
WRITER_EXIT_MISSING, WRITER_EXIT_INVALID = 3, 2  # the model or adapter is missing; not a llama.cpp model


def gguf_name(hf_name: str) -> str | None:
    """llama.cpp's name for a transformers Llama tensor, or None for tensors it does not keep."""
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    parts = hf_name.split(".")
    if parts[:2] == ["model", "layers"] and parts[-1] == "weight":
        module = ".".join(parts[3:-1])
        if module in _LAYER_NAMES:
            return f"blk.{parts[2]}.{_LAYER_NAMES[module]}.weight"
    return None


def permute_rotary(weight: np.ndarray, n_head: int) -> np.ndarray:
    """The query/key row order llama.cpp's rotary embedding expects (``convert_hf_to_gguf.permute``)."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def llama_row_order(llama_name: str, rows: np.ndarray, n_head: int, n_kv: int) -> np.ndarray:
    """``rows`` (a weight, or a LoRA B: one row per output) of ``llama_name`` in the order llama.cpp
    expects: the query/key projections' rows get the rotary permutation, every other tensor is as is."""
    if llama_name.endswith("attn_q.weight"):
        return permute_rotary(rows, n_head)
    if llama_name.endswith("attn_k.weight"):
        return permute_rotary(rows, n_kv)
    return rows


def gguf_path(spec: VersionSpec) -> Path:
    """Where a version's GGUF lives: beside its adapter, or beside a base model directory."""
    return (spec.adapter_dir or spec.base_dir) / "model.gguf"


def ensure_gguf(spec: VersionSpec, settings: Settings) -> Path:
    """The version's GGUF, written once (atomically) from the transformers weights if it is missing,
    by a child process (``engine.gguf_writer``: the merge needs torch, which this process need not
    load). The bundled base model is served from the GGUF it ships as: the very weights transformers
    de-quantised."""
    if spec.adapter_dir is None and spec.base_dir.name == BUNDLED_DIR_NAME:
        return bundled_gguf_path()
    path = gguf_path(spec)
    if not path.is_file():
        started = time.perf_counter()
        _write_in_child(spec, path, settings.gguf_quantization)
        log.info("wrote %s for %s in %.1fs", path, spec.id, time.perf_counter() - started)
    return path


def _write_in_child(spec: VersionSpec, path: Path, quantization: str) -> None:
    args = ["--id", spec.id, "--base", str(spec.base_dir), "--out", str(path), "--quantization", quantization]
    result = run_module("engine.gguf_writer", args + (["--adapter", str(spec.adapter_dir)] if spec.adapter_dir else []),
                        capture=True)
    if result.returncode == WRITER_EXIT_MISSING:
        raise ModelNotFoundError(last_line(result))
    if result.returncode == WRITER_EXIT_INVALID:
        raise InvalidInputError(last_line(result))
    if result.returncode != 0:
        raise RuntimeError(f"writing the GGUF of version {spec.id} failed: {last_line(result)}")


def write_llama_gguf(model: Any, tokenizer: Any, target: Path, *, quantization: str = "Q8_0",
                     name: str = "tuneloop") -> Path:
    """Write ``model`` (a transformers ``LlamaForCausalLM``, adapters already merged) as a GGUF at
    ``target``. ``quantization`` applies to the 2-D weight matrices; norms stay float32."""
    import gguf

    if quantization not in QUANTIZATIONS:
        raise InvalidInputError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, not {quantization!r}",
                                param="quantization")
    config = model.config
    if config.model_type != "llama":
        raise InvalidInputError(f"llama.cpp export supports Llama models; this one is {config.model_type!r}.")
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}.partial")
    writer = gguf.GGUFWriter(str(staging), "llama")
    writer.add_name(name)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None)
                                    or (config.rope_parameters or {}).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type({"F32": 0, "F16": 1, "Q8_0": 7, "Q4_1": 3}[quantization])
    _add_tokenizer(writer, tokenizer)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        llama_name = gguf_name(hf_name)
        if llama_name is None or (tied and llama_name == "output.weight"):
            continue
        data = llama_row_order(llama_name, tensor.detach().to("cpu").float().numpy(), n_head, n_kv)
        _add_tensor(writer, llama_name, data, quantization)
    return finish_gguf(writer, staging, target)


def finish_gguf(writer: Any, staging: Path, target: Path) -> Path:
    """Write out a ``gguf.GGUFWriter`` opened on ``staging`` and rename it to ``target``: a reader sees
    the whole file or none."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(staging, target)
    return target


def _add_tensor(writer: Any, name: str, data: np.ndarray, quantization: str) -> None:
    import gguf

    kind = quantization if data.ndim == 2 and data.shape[-1] % 32 == 0 else "F32"
    if kind == "F32":
        writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
    elif kind == "F16":
        writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float16))
    else:
        qtype = getattr(gguf.GGMLQuantizationType, kind)
        writer.add_tensor(name, gguf.quants.quantize(data.astype(np.float32), qtype), raw_dtype=qtype)


def _add_tokenizer(writer: Any, tokenizer: Any) -> None:
    """The tokenizer as llama.cpp reads it: copied from the bundled GGUF (same vocabulary), with the
    model's own chat template and special ids."""
    import gguf


    reader = gguf.GGUFReader(str(bundled_gguf_path()))
    tokens = reader.fields["tokenizer.ggml.tokens"]
    if len(tokens.data) != len(tokenizer):
        raise InvalidInputError(f"llama.cpp export needs the bundled SmolLM2 vocabulary ({len(tokens.data)} tokens); "
                                f"this tokenizer has {len(tokenizer)}.")
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
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)
