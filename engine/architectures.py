"""The Hugging Face model architectures tuneloop knows by name: which modules get LoRA weights, and how
each is written as a llama.cpp GGUF (``engine.gguf_files``).

Tensor names come from the ``gguf`` package's maps (``gguf.get_tensor_name_map``); what differs per
architecture follows llama.cpp's ``convert_hf_to_gguf.py``: Llama and Mistral (written as ``llama``)
get their query/key rows permuted for llama.cpp's interleaved rotary embedding; Qwen2, Phi-3 and
Gemma 2 use the rotate-half layout transformers uses, so their rows stay as they are. Phi-3's fused
``qkv_proj`` and ``gate_up_proj`` are llama.cpp's ``attn_qkv`` and ``ffn_up`` unchanged. Gemma 2's
RMSNorm multiplies by ``1 + weight``, llama.cpp's by ``weight``: its norms are written +1.

``unsupported_reason`` reads only ``config.json``: a server decides at start, without torch, whether
llama.cpp can serve a base model (``engine.backends.servable_settings``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Architecture:
    """How one transformers ``model_type`` is trained and written."""

    gguf_arch: str  # llama.cpp's architecture name (a ``gguf.MODEL_ARCH`` value's name, lowercase)
    lora_targets: tuple[str, ...]  # every linear projection of attention and MLP, by this model's names
    interleaved_rope: bool = False  # llama.cpp rotates neighbouring pairs: q/k rows are permuted (llama)
    norm_offset: float = 0.0  # added to every norm weight (Gemma's RMSNorm scales by 1 + weight)


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("llama", ALL_LINEAR, interleaved_rope=True),
    "mistral": Architecture("llama", ALL_LINEAR, interleaved_rope=True),  # as convert_hf_to_gguf writes it
    "qwen2": Architecture("qwen2", ALL_LINEAR),
    "phi3": Architecture("phi3", ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")),
    "gemma2": Architecture("gemma2", ALL_LINEAR, norm_offset=1.0),
}


def architecture(model_type: str) -> Architecture | None:
    return ARCHITECTURES.get(model_type)


def lora_targets(model_type: str, requested: list[str] | tuple[str, ...]) -> list[str] | str:
    """The modules a fresh adapter trains. The default request (every Llama-named projection) means
    every linear projection of *this* architecture: Phi-3's fused ones, peft's ``all-linear`` for an
    architecture not in the table. Any other request is taken as written."""
    if tuple(requested) != ALL_LINEAR:
        return list(requested)
    known = architecture(model_type)
    return list(known.lora_targets) if known else "all-linear"


def rope_parameters(config: Any) -> dict[str, Any]:
    """The rotary settings of a config (object or ``config.json`` dict) as one dict: transformers 5's
    ``rope_parameters`` (per layer type for Gemma: the full-attention entry), or older ``rope_theta`` /
    ``rope_scaling`` fields."""
    get = config.get if isinstance(config, dict) else (lambda key, default=None: getattr(config, key, default))
    params = dict(get("rope_parameters") or {})
    if isinstance(params.get("full_attention"), dict):
        params = dict(params["full_attention"])
    params.update({k: v for k, v in (get("rope_scaling") or {}).items() if k not in params})
    if "rope_theta" not in params and get("rope_theta") is not None:
        params["rope_theta"] = get("rope_theta")
    params.setdefault("rope_theta", 10000.0)
    rope_type = params.get("rope_type") or params.get("type") or "default"
    params["rope_type"] = rope_type
    return params


def unsupported_reason(config: dict[str, Any]) -> str | None:
    """Why a model with this ``config.json`` cannot be written as a GGUF that answers as transformers
    does, or None when it can."""
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        return (f"llama.cpp export knows the architectures {', '.join(sorted(ARCHITECTURES))}; "
                f"this model is {model_type!r}")
    rope_type = rope_parameters(config)["rope_type"]
    if rope_type not in ("default", "linear", "llama3") or (rope_type == "llama3" and model_type != "llama"):
        return f"its rotary scaling {rope_type!r} is not written to llama.cpp by tuneloop"
    if model_type == "qwen2" and config.get("use_sliding_window"):
        return "Qwen2 with sliding-window attention is not written to llama.cpp by tuneloop"
    if model_type == "gemma2":
        if config.get("attn_logit_softcapping") is None or config.get("final_logit_softcapping") is None:
            return "llama.cpp always soft-caps Gemma 2's logits; this model does not"
        if config.get("tie_word_embeddings") is False:
            return "llama.cpp reads Gemma 2's output weights from its embeddings; this model's are untied"
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        # llama.cpp does not read query_pre_attn_scalar: it scales by head_dim, or for the 27B (46 layers)
        # by hidden_size / heads
        expected = (config["hidden_size"] // config["num_attention_heads"] if config.get("num_hidden_layers") == 46
                    else head_dim)
        if config.get("query_pre_attn_scalar", expected) != expected:
            return (f"llama.cpp scales Gemma 2's attention by {expected}, this model by "
                    f"query_pre_attn_scalar={config['query_pre_attn_scalar']}")
    return None


def model_dir_unsupported_reason(model_dir: Path) -> str | None:
    """``unsupported_reason`` of the model in ``model_dir`` (None when it has no readable config)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return unsupported_reason(config)


def llama3_rope_factors(config: Any, head_dim: int) -> list[float] | None:
    """Llama 3.1's per-frequency rotary factors (``rope_freqs`` in llama.cpp), or None when the model
    does not scale its rotary embedding that way. The formula is transformers' ``llama3`` rope init."""
    params = rope_parameters(config)
    if params["rope_type"] != "llama3":
        return None
    factor = params.get("factor", 8.0)
    low, high = params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
    old_context = params.get("original_max_position_embeddings", 8192)
    factors = []
    for i in range(0, head_dim, 2):
        wavelength = 2 * math.pi * params["rope_theta"] ** (i / head_dim)
        if wavelength < old_context / high:
            factors.append(1.0)
        elif wavelength > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return factors
