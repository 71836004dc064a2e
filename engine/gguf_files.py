"""GGUF files for llama.cpp, written with the ``gguf`` package: a whole model from a transformers
causal LM (any version: the base, or base + LoRA merged), so llama.cpp serves and the gates ask
exactly the weights transformers trained, and so a version can leave tuneloop for Ollama or LM Studio.

Which architectures can be written, and what each needs (tensor names from the ``gguf`` package's
maps, the rotary permutation of Llama's query/key projections, Gemma 2's norms and soft-capping),
is ``engine.architectures``; the vocabulary is ``engine.gguf_vocab``. Files are written under a
temporary name and renamed into place.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.architectures import ARCHITECTURES, Architecture, llama3_rope_factors, rope_parameters, unsupported_reason
from engine.child_process import last_line, run_module
from engine.gguf_vocab import add_vocabulary
from engine.modelstore import BUNDLED_DIR_NAME, ModelNotFoundError, bundled_gguf_path
from engine.protocol import VersionSpec
from tuneloop.core.errors import InvalidInputError
from tuneloop.core.settings import Settings

log = logging.getLogger(__name__)

QUANTIZATIONS = ("F32", "F16", "Q8_0", "Q4_1")
# How engine.gguf_writer (the child that merges and writes) says what went wrong
WRITER_EXIT_MISSING, WRITER_EXIT_INVALID = 3, 2  # the model or adapter is missing; not a llama.cpp model


def tensor_names(arch: Architecture, n_layers: int) -> Any:
    """The ``gguf`` package's map from transformers tensor names to llama.cpp's for ``arch``."""
    import gguf

    model_arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch.gguf_arch)
    return gguf.get_tensor_name_map(model_arch, n_layers)


def gguf_name(hf_name: str, names: Any) -> str | None:
    """llama.cpp's name for a transformers tensor (``names``: ``tensor_names``), or None for one it
    does not keep."""
    return names.get_name(hf_name, try_suffixes=(".weight", ".bias"))


def permute_rotary(weight: np.ndarray, n_head: int) -> np.ndarray:
    """The query/key row order llama.cpp's rotary embedding expects (``convert_hf_to_gguf.permute``)."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def llama_row_order(arch: Architecture, llama_name: str, rows: np.ndarray, n_head: int, n_kv: int) -> np.ndarray:
    """``rows`` (a weight or bias, or a LoRA B: one row per output) of ``llama_name`` in the order
    llama.cpp expects: where its rotary embedding interleaves (``arch.interleaved_rope``), the
    query/key projections' rows get the rotary permutation; every other tensor is as is."""
    if arch.interleaved_rope and ".attn_q." in llama_name:
        return permute_rotary(rows, n_head)
    if arch.interleaved_rope and ".attn_k." in llama_name:
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


def write_gguf(model: Any, tokenizer: Any, target: Path, *, quantization: str = "Q8_0",
               name: str = "tuneloop") -> Path:
    """Write ``model`` (a transformers causal LM of an architecture in ``engine.architectures``,
    adapters already merged) as a GGUF at ``target``. ``quantization`` applies to the 2-D weight
    matrices; norms and biases stay float32."""
    import gguf

    if quantization not in QUANTIZATIONS:
        raise InvalidInputError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, not {quantization!r}",
                                param="quantization")
    config = model.config
    reason = unsupported_reason(config.to_dict())
    if reason:
        raise InvalidInputError(f"This model cannot be written for llama.cpp: {reason}.")
    arch = ARCHITECTURES[config.model_type]
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}.partial")
    writer = gguf.GGUFWriter(str(staging), arch.gguf_arch)
    writer.add_name(name)
    _add_parameters(writer, config, head_dim)
    writer.add_file_type({"F32": 0, "F16": 1, "Q8_0": 7, "Q4_1": 3}[quantization])
    add_vocabulary(writer, tokenizer, config.model_type, config.vocab_size)
    names = tensor_names(arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        llama_name = gguf_name(hf_name, names)
        if llama_name is None:
            raise InvalidInputError(f"llama.cpp has no {arch.gguf_arch} tensor for {hf_name}; this model cannot "
                                    "be written for llama.cpp.")
        data = tensor.detach().to("cpu").float().numpy()
        if arch.norm_offset and hf_name.endswith("norm.weight"):
            data = data + np.float32(arch.norm_offset)
        _add_tensor(writer, llama_name, llama_row_order(arch, llama_name, data, n_head, n_kv), quantization)
    factors = llama3_rope_factors(config, head_dim)
    if factors is not None:
        writer.add_tensor("rope_freqs.weight", np.asarray(factors, dtype=np.float32))
    return finish_gguf(writer, staging, target)


def _add_parameters(writer: Any, config: Any, head_dim: int) -> None:
    """The hyperparameters llama.cpp reads for ``config``'s architecture."""
    import gguf

    n_head = config.num_attention_heads
    rope = rope_parameters(config)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    if head_dim != config.hidden_size // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    partial = rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None) or 1.0)
    writer.add_rope_dimension_count(int(partial * head_dim))
    writer.add_vocab_size(config.vocab_size)
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    if config.model_type == "phi3":
        # llama.cpp reads Phi-3's window but attends to the whole context (it says so when it loads)
        writer.add_sliding_window(int(getattr(config, "sliding_window", None) or 0))
        if getattr(config, "original_max_position_embeddings", None):
            writer.add_rope_scaling_orig_ctx_len(int(config.original_max_position_embeddings))
    if config.model_type == "gemma2":
        writer.add_attn_logit_softcapping(float(config.attn_logit_softcapping))
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
        writer.add_sliding_window(int(config.sliding_window))


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
