"""Reuse of the KV cells of the last prompt fed: a new chat skips the tokens it shares with it.

Every chat of a deployment starts with the same tokens: the chat template and the system prompt,
and a follow-up turn repeats the whole conversation before it. Feeding a prompt is most of a new
chat's time to first token on a CPU (measured: about 1 s for eight 40-token prompts on 2 cores,
against ~13 ms for a decode step), so the llama.cpp engine keeps the last fully fed prompt in one
spare sequence of the shared KV cache and starts each new chat from the longest prefix it shares
with it. In llama.cpp's unified KV cache ``llama_memory_seq_cp`` only tags the cells with one more
sequence id: no copy, and no cells are used twice.

The cells depend only on the tokens before them (causal attention), so a chat started from them
decodes as it would from its own prefill: a long prompt fed over several steps is the same case.
"""

from __future__ import annotations

from typing import Any


class PromptCache:
    """The tokens held by the spare sequence ``seq`` of one llama.cpp context (``memory``)."""

    def __init__(self, lc: Any, memory: Any, seq: int):
        self.lc, self.memory, self.seq = lc, memory, seq
        self.tokens: list[int] = []

    def shared_with(self, prompt_ids: list[int]) -> int:
        """How many leading tokens of ``prompt_ids`` are cached, less one: the last prompt token is
        always decoded, since its logits give the first answer token."""
        limit = min(len(self.tokens), len(prompt_ids) - 1)
        shared = 0
        while shared < limit and self.tokens[shared] == prompt_ids[shared]:
            shared += 1
        return shared

    def start(self, seq: int, prompt_ids: list[int]) -> int:
        """Give sequence ``seq`` the cached cells of the prefix it shares; returns how many tokens of
        ``prompt_ids`` need not be fed."""
        shared = self.shared_with(prompt_ids)
        if shared:
            self.lc.llama_memory_seq_cp(self.memory, self.seq, seq, 0, shared)
        return shared

    def remember(self, seq: int, prompt_ids: list[int]) -> None:
        """Hold the prompt that sequence ``seq`` has just been fed, in place of the one held."""
        if prompt_ids == self.tokens:
            return
        self.clear()
        self.lc.llama_memory_seq_cp(self.memory, seq, self.seq, 0, len(prompt_ids))
        self.tokens = list(prompt_ids)

    def clear(self) -> None:
        """Free the cells held (the context needs them for chats)."""
        if self.tokens:
            self.lc.llama_memory_seq_rm(self.memory, self.seq, -1, -1)
            self.tokens = []
