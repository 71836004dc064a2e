"""A version's LoRA adapter in llama.cpp's adapter GGUF format (``general.type = adapter``).

The alternative to a merged GGUF per version that issue 15 asked to measure (``bench/gguf_artifact.py``):
llama.cpp loads the base GGUF once and applies the adapter's few MB on top (``llama_adapter_lora_init``,
``llama_set_adapters_lora``). Written from peft's ``adapter_model.safetensors`` with numpy only, as
llama.cpp's ``convert_lora_to_gguf.py`` lays it out: ``blk.N.<tensor>.weight.lora_a`` is A (rank × in),
``.lora_b`` is B (out × rank), and B's rows of the query/key projections get the same rotary
permutation as the merged weights (Llama and Mistral: ``engine.architectures``). llama.cpp scales by
``adapter.lora.alpha / rank``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from engine.architectures import architecture, unsupported_reason
from engine.gguf_files import finish_gguf, gguf_name, llama_row_order, tensor_names
from tuneloop.core.errors import InvalidInputError

_PEFT_PREFIX = "base_model.model."
_NUMPY_TYPES = {"F32": np.float32, "F16": np.float16}


def write_lora_gguf(adapter_dir: Path, base_dir: Path, target: Path, *, dtype: str = "F16") -> Path:
    """Write the peft adapter in ``adapter_dir`` (trained on the model in ``base_dir``) as a llama.cpp
    adapter GGUF at ``target``, atomically."""
    import gguf
    from safetensors.numpy import load_file

    if dtype not in _NUMPY_TYPES:
        raise InvalidInputError(f"adapter dtype must be one of {', '.join(_NUMPY_TYPES)}, not {dtype!r}", param="dtype")
    adapter_config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    config = json.loads((Path(base_dir) / "config.json").read_text())
    reason = unsupported_reason(config)
    if reason:
        raise InvalidInputError(f"This model's adapters cannot be written for llama.cpp: {reason}.")
    arch = architecture(config["model_type"])
    rank, alpha = int(adapter_config["r"]), float(adapter_config["lora_alpha"])
    if adapter_config.get("use_rslora"):
        alpha = alpha * rank ** 0.5  # rsLoRA scales by alpha / sqrt(r); llama.cpp always divides by r
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    weights = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}.partial")
    names = tensor_names(arch, config["num_hidden_layers"])
    writer = gguf.GGUFWriter(str(staging), arch.gguf_arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    written = 0
    for name, tensor in sorted(weights.items()):
        llama_name, part = _lora_name(name, names)
        if llama_name is None:
            continue
        data = tensor.astype(np.float32)
        if part == "lora_b":  # B's rows are the adapted weight's output rows (A's columns are its inputs)
            data = llama_row_order(arch, llama_name, data, n_head, n_kv)
        writer.add_tensor(f"{llama_name}.{part}", np.ascontiguousarray(data, dtype=_NUMPY_TYPES[dtype]))
        written += 1
    if not written:
        raise InvalidInputError(f"{adapter_dir} holds no LoRA weights of a {arch.gguf_arch} projection.")
    return finish_gguf(writer, staging, target)


def _lora_name(peft_name: str, names: Any) -> tuple[str | None, str]:
    """(llama.cpp name of the adapted weight, "lora_a" | "lora_b") of one peft tensor name."""
    name = peft_name.removeprefix(_PEFT_PREFIX)
    for marker, part in ((".lora_A.weight", "lora_a"), (".lora_B.weight", "lora_b")):
        if name.endswith(marker):
            return gguf_name(name.removesuffix(marker) + ".weight", names), part
    return None, ""
