"""How a conversation becomes model input. Serving and training both use this module, so a model is
trained on exactly the prompt layout it is later served with (the model's own chat template)."""

from __future__ import annotations

from typing import Any

from jinja2 import TemplateError

from tuneloop.core import errors

_SENTINEL = "\u2063TUNELOOP_COMPLETION\u2063"


class PromptTooLongError(errors.InvalidInputError):
    """Even the system prompt plus the last user message exceed the context budget."""

    param, code = "messages", "context_length_exceeded"


def with_system_prompt(system_prompt: str, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Put the configured system prompt first unless the caller sent its own."""
    if messages and messages[0]["role"] == "system":
        return list(messages)
    return [{"role": "system", "content": system_prompt}, *messages]


def system_with_memory(system_prompt: str, memory: str) -> str:
    """The system prompt as serving sends it when correction memory found verified answers
    (``memory`` is ``feedback.memory.service.memory_context``'s text). Training builds its memory-context
    examples with this same function, so the tuned model sees exactly the serving layout."""
    return system_prompt + (f"\n\n{memory}" if memory else "")


def render_chat(tokenizer: Any, messages: list[dict[str, str]], **options: Any) -> str:
    """The model's chat template applied, as text. A template with no system turn (Gemma's refuses one)
    gets the system prompt at the head of the first user message, as such models are prompted."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **options)
    except TemplateError:
        if len(messages) < 2 or messages[0]["role"] != "system" or messages[1]["role"] != "user":
            raise
        system, first, *rest = messages
        folded = [{**first, "content": f"{system['content']}\n\n{first['content']}"}, *rest]
        return tokenizer.apply_chat_template(folded, tokenize=False, **options)


def prompt_text(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    return render_chat(tokenizer, messages, add_generation_prompt=True)


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    return tokenizer(prompt_text(tokenizer, messages), add_special_tokens=False)["input_ids"]


def completion_text(tokenizer: Any, messages: list[dict[str, str]], answer: str) -> str:
    """The text that follows the prompt when the assistant says ``answer``, including the template's
    end-of-turn marker, derived from the template itself so it holds for any chat model."""
    full = render_chat(tokenizer, [*messages, {"role": "assistant", "content": _SENTINEL}])
    prefix = prompt_text(tokenizer, messages)
    if not full.startswith(prefix) or _SENTINEL not in full:
        # Templates that rewrite earlier turns: fall back to answer + eos.
        return answer + (tokenizer.eos_token or "")
    tail = full[len(prefix):]
    end = tail.index(_SENTINEL) + len(_SENTINEL)
    marker = tail[end:].rstrip("\n")
    return tail[: tail.index(_SENTINEL)] + answer + marker


def trim_to_budget(
    tokenizer: Any, messages: list[dict[str, str]], budget: int
) -> tuple[list[dict[str, str]], list[int]]:
    """Drop the oldest turns after the system prompt until the prompt fits in ``budget`` tokens.

    Returns the kept messages and their token ids. Raises PromptTooLongError when the system prompt
    and the final message alone do not fit.
    """
    kept = list(messages)
    has_system = bool(kept) and kept[0]["role"] == "system"
    first_droppable = 1 if has_system else 0
    while True:
        ids = prompt_ids(tokenizer, kept)
        if len(ids) <= budget:
            return kept, ids
        if len(kept) - first_droppable <= 1:
            raise PromptTooLongError(
                f"The prompt needs {len(ids)} tokens but the context budget is {budget}; "
                "shorten the last message or raise max context (TUNELOOP_CONTEXT_BUDGET)."
            )
        del kept[first_droppable]


def raw_prompt_ids(tokenizer: Any, prompt: str, max_tokens: int, context: int) -> list[int]:
    """A legacy completion prompt as written (no chat template), checked against the context: raises
    ``PromptTooLongError`` naming ``max_tokens`` or ``prompt``, whichever the caller must change."""
    if max_tokens >= context:
        raise PromptTooLongError(f"max_tokens={max_tokens} leaves no room for the prompt in a context of "
                                 f"{context} tokens; lower max_tokens", param="max_tokens", code="invalid_value")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if len(ids) + max_tokens > context:
        raise PromptTooLongError(f"the prompt has {len(ids)} tokens and max_tokens is {max_tokens}; together they "
                                 f"must fit the context of {context} tokens", param="prompt")  # code: context_length_exceeded
    return ids


def scored_answer_ids(tokenizer: Any, messages: list[dict[str, str]], answer: str,
                      budget: int, answer_tokens: int | None = None) -> tuple[list[int], list[int]]:
    """The prompt ids (trimmed to fit ``budget`` with the answer) and the answer's ids as the template
    lays out the assistant's turn, end-of-turn marker included: what answer scoring evaluates. The
    marker counts because an approved answer that *ends* where the question is answered is part of
    what makes it the right reply."""
    answer_ids = tokenizer(completion_text(tokenizer, messages, answer), add_special_tokens=False)["input_ids"]
    answer_ids = answer_ids[:answer_tokens] if answer_tokens else answer_ids  # a prefix: what tells answers apart
    return trim_to_budget(tokenizer, messages, max(1, budget - len(answer_ids)))[1], answer_ids
