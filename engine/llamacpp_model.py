"""One registry version loaded in llama.cpp: model, context and batch (``engine.llamacpp`` decodes with it).

The context holds a KV cache for ``max_batch_size`` chats, each a sequence of its own, plus one
sequence that keeps the last prompt fed so the next chat can start from it (``engine.prompt_cache``).
The cache is unified: a long chat may use the cells short ones leave.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from typing import Any

from engine.gguf_files import ensure_gguf
from engine.prompt_cache import PromptCache
from engine.protocol import VersionSpec
from tuneloop.core.settings import Settings

log = logging.getLogger(__name__)
_backend_lock = threading.Lock()
_backend_ready = False
_log_handler = None


def _init_backend() -> Any:
    """llama.cpp, initialised once per process, logging only its errors (through ours)."""
    global _backend_ready, _log_handler
    import llama_cpp

    with _backend_lock:
        if not _backend_ready:
            _log_handler = llama_cpp.llama_log_callback(_log_errors)  # kept referenced: C holds the pointer
            llama_cpp.llama_log_set(_log_handler, ctypes.c_void_p())
            llama_cpp.llama_backend_init()
            _backend_ready = True
    return llama_cpp


def _log_errors(level, text, _user_data):  # noqa: ANN001  (a ctypes callback)
    if level == 4:  # GGML_LOG_LEVEL_ERROR (5 is a continuation line of any level)
        log.error("llama.cpp: %s", text.decode(errors="replace").rstrip())


class LlamaModel:
    """One version in llama.cpp: model, context (a KV cache for ``n_seq`` sequences, plus one that
    holds the last prompt for the next chat to start from) and a batch."""

    def __init__(self, spec: VersionSpec, settings: Settings, tokenizer: Any, eos_ids: set[int]):
        lc = _init_backend()
        self.lc, self.spec, self.tokenizer, self.eos_ids = lc, spec, tokenizer, eos_ids
        path = ensure_gguf(spec, settings)
        model_params = lc.llama_model_default_params()
        self.gpu_layers = gpu_layers(settings.llamacpp_gpu_layers)
        model_params.n_gpu_layers = self.gpu_layers
        model_params.use_extra_bufts = settings.llamacpp_extra_buffers  # see the setting: AMX may crash a VM
        self.model = lc.llama_model_load_from_file(str(path).encode(), model_params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}; delete it to have it written again.")
        self.n_seq = settings.max_batch_size
        self.n_batch = max(512, settings.context_budget)
        context_params = lc.llama_context_default_params()
        context_params.n_ctx = settings.llamacpp_context_tokens
        context_params.n_batch = self.n_batch
        # llama.cpp's compute buffers grow with the micro-batch: after one ~1,800-token prompt the server
        # kept +37 MB at 2048 and +18 MB at 512 (bench/serve.py); a long prompt is still fed in one decode
        # call (llama.cpp splits it into micro-batches inside)
        context_params.n_ubatch = min(512, self.n_batch)
        context_params.n_seq_max = self.n_seq + 1  # the last: the prompt cache's
        context_params.kv_unified = True  # sequences share the cache: a long chat may use what short ones leave
        self.kv_cache_type = kv_cache_type(settings.llamacpp_kv_cache_type,
                                           lc.llama_model_n_embd(self.model) // lc.llama_model_n_head(self.model))
        if self.kv_cache_type == "q8_0":  # llama.cpp quantises V only with flash attention
            context_params.type_k = context_params.type_v = lc.GGML_TYPE_Q8_0
            context_params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
        threads = settings.llamacpp_threads or os.cpu_count() or 1
        context_params.n_threads = context_params.n_threads_batch = threads
        context_params.no_perf = True
        self.ctx = lc.llama_init_from_model(self.model, context_params)
        if not self.ctx:
            lc.llama_model_free(self.model)
            fix = "lower TUNELOOP_LLAMACPP_CONTEXT_TOKENS."
            if self.kv_cache_type == "q8_0":
                fix = ("set TUNELOOP_LLAMACPP_KV_CACHE_TYPE=f16 (a q8_0 cache needs attention heads whose size is a "
                       "multiple of 32) or " + fix)
            raise RuntimeError("llama.cpp could not create a context; " + fix)
        self.memory = lc.llama_get_memory(self.ctx)
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.n_ctx = lc.llama_n_ctx(self.ctx)
        self.max_context = min(int(lc.llama_model_n_ctx_train(self.model)), self.n_ctx)
        self.batch = lc.llama_batch_init(self.n_batch, 0, 1)
        self.free_seqs = list(range(self.n_seq))
        self.tokens_reserved = 0  # prompt + max_tokens of the chats decoding now (with the cache's, never above n_ctx)
        self.prompt_cache = PromptCache(lc, self.memory, self.n_seq)

    def has_room(self, reserved: int) -> bool:
        """Whether ``reserved`` more cells fit beside the running chats, freeing the prompt cache if
        that is what it takes."""
        if self.tokens_reserved + len(self.prompt_cache.tokens) + reserved <= self.n_ctx:
            return True
        self.prompt_cache.clear()
        return self.tokens_reserved + reserved <= self.n_ctx

    def release(self, seq: int, reserved: int) -> None:
        self.lc.llama_memory_seq_rm(self.memory, seq, -1, -1)
        self.free_seqs.append(seq)
        self.tokens_reserved -= reserved

    def close(self) -> None:
        self.lc.llama_batch_free(self.batch)
        self.lc.llama_free(self.ctx)
        self.lc.llama_model_free(self.model)


ALL_LAYERS = 999  # llama.cpp offloads min(n_gpu_layers, the model's layers + output)


def gpu_layers(setting: str | int) -> int:
    """``n_gpu_layers`` for the ``llamacpp_gpu_layers`` setting: auto offloads every layer when this
    llama-cpp-python was built with GPU offload (CUDA, Metal, Vulkan), else none."""
    if setting != "auto":
        return int(setting)
    return ALL_LAYERS if _init_backend().llama_supports_gpu_offload() else 0


def kv_cache_type(setting: str, head_size: int) -> str:
    """The KV cache a context gets: ``auto`` is q8_0 where llama.cpp can quantise it (attention heads a
    multiple of its 32-value blocks wide: SmolLM2's are 64), else f16. q8_0 holds ~85 MB less at 8192
    cells and answered the gate questions as close to transformers as f16 (bench/gguf_artifact.py)."""
    if setting != "auto":
        return setting
    return "q8_0" if head_size % 32 == 0 else "f16"


def put_token(batch: Any, index: int, token: int, position: int, seq: int, logits: bool) -> None:
    """Write one token into slot ``index`` of a llama.cpp batch, for one sequence."""
    batch.token[index] = token
    batch.pos[index] = position
    batch.n_seq_id[index] = 1
    batch.seq_id[index][0] = seq
    batch.logits[index] = 1 if logits else 0
