"""Approved corrections (and, optionally, liked answers) as training examples, and the two file
formats trainers read.

An example is a ``feedback.examples.TrainingExample``: ``messages`` = [system prompt, ...earlier
turns..., the user's (cleaned) question], ``completion`` = the answer, plus the correction's ids,
source, key facts and accepted phrasings.

Conversation corrections keep their multi-turn context, trimmed oldest-turn-first to the context
budget. With ``settings.scrub_pii`` every text is scrubbed again here, because earlier turns come
straight from the conversation. ``split_key`` is the lineage that decides the train/validation side
(``Correction.split_key``: a paraphrase goes with the correction it rewords).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from bot.models import Message
from engine.prompting import PromptTooLongError, trim_to_budget
from feedback.corrections.models import Correction, CorrectionSource
from feedback.corrections.service import approved_corrections
from feedback.examples import TrainingExample
from feedback.pii import training_scrubber
from feedback.ratings.models import Rating
from tuneloop.core.settings import Settings

CHARS_PER_TOKEN = 4  # rough budget without a tokenizer; errs towards keeping less context


def training_examples(session: Session, settings: Settings, tokenizer: Any = None) -> list[TrainingExample]:
    """Every current approved correction as an example, plus thumbs-up answers when
    ``settings.include_thumbs_up``. Sorted by id, so the same data gives the same list."""
    examples = [correction_example(session, settings, c, tokenizer) for c in approved_corrections(session)]
    if settings.include_thumbs_up:
        examples += _from_thumbs_up(session, settings, tokenizer)
    return sorted(examples, key=lambda e: e.id)


def correction_example(session: Session, settings: Settings, correction: Correction,
                       tokenizer: Any) -> TrainingExample:
    """One approved correction as an example, with its conversation's earlier turns (the DPO export
    pairs it with the answer it corrects)."""
    turns: list[dict[str, str]] = []
    if correction.message_id:
        turns = _turns_before(session, correction.message_id)
        if turns and turns[-1]["role"] == "user":
            turns[-1] = {"role": "user", "content": correction.question}
    if not turns:
        turns = [{"role": "user", "content": correction.question}]
    return _example(settings, tokenizer, turns, correction.answer, id=f"ex_{correction.id}",
                    correction_id=correction.id, lineage_id=correction.lineage_id, split_key=correction.split_key,
                    source=str(correction.source), key_facts=list(correction.key_facts),
                    alternative_questions=list(correction.alternative_questions or []))


def _from_thumbs_up(session: Session, settings: Settings, tokenizer: Any) -> list[TrainingExample]:
    corrected = select(Correction.message_id).where(col(Correction.message_id).is_not(None))
    disliked = select(Rating.message_id).where(Rating.value < 0)
    liked = session.exec(select(Message).where(
        Message.role == "assistant",
        col(Message.id).in_(select(Rating.message_id).where(Rating.value > 0)),
        col(Message.id).not_in(disliked), col(Message.id).not_in(corrected))).all()
    examples = []
    for message in liked:
        turns = _turns_before(session, message.id)
        if turns and turns[-1]["role"] == "user":
            examples.append(_example(settings, tokenizer, turns, message.content, id=f"ex_{message.id}",
                                     correction_id=None, lineage_id=message.id, split_key=message.id,
                                     source=str(CorrectionSource.thumbs_up), key_facts=[],
                                     alternative_questions=[]))
    return examples


def _turns_before(session: Session, message_id: str) -> list[dict[str, str]]:
    message = session.get(Message, message_id)
    if message is None:
        return []
    rows = session.exec(select(Message).where(Message.conversation_id == message.conversation_id,
                                              Message.position < message.position,
                                              col(Message.role).in_(("user", "assistant")))
                        .order_by(col(Message.position))).all()
    return [{"role": m.role, "content": m.content} for m in rows]


def _example(settings: Settings, tokenizer: Any, turns: list[dict[str, str]], answer: str,
             **meta: Any) -> TrainingExample:
    clean = training_scrubber(settings)
    turns = [{"role": t["role"], "content": clean(t["content"])} for t in turns]
    answer = clean(answer)
    meta["alternative_questions"] = [clean(q) for q in meta.get("alternative_questions") or []]
    messages = trim_context([{"role": "system", "content": settings.resolved_system_prompt}, *turns],
                            answer, settings, tokenizer)
    return TrainingExample(messages=messages, completion=answer, **meta)


def trim_context(messages: list[dict[str, str]], answer: str, settings: Settings, tokenizer: Any = None) -> list[dict]:
    """Drop the oldest turns (never the system prompt or the question) until prompt + answer fit
    ``settings.context_budget`` tokens. Turns are dropped in user/assistant pairs where possible so
    the context never starts with an assistant turn."""
    if tokenizer is not None:
        budget = max(1, settings.context_budget - len(tokenizer(answer, add_special_tokens=False)["input_ids"]))
        try:
            messages, _ids = trim_to_budget(tokenizer, messages, budget)
        except PromptTooLongError:
            messages = [messages[0], messages[-1]]
    else:
        budget = settings.context_budget * CHARS_PER_TOKEN - len(answer)
        messages = list(messages)
        while len(messages) > 2 and sum(len(m["content"]) for m in messages) > budget:
            del messages[1]
    while len(messages) > 2 and messages[1]["role"] == "assistant":
        del messages[1]
    return messages


# --- file formats ------------------------------------------------------------------------------
def render_legacy_prompt(messages: list[dict[str, str]]) -> str:
    """The legacy prompt text: system prompt, then "Customer:"/"Agent:" lines."""
    names = {"user": "Customer", "assistant": "Agent"}
    lines = [m["content"] if m["role"] == "system" else f"{names.get(m['role'], m['role'])}: {m['content']}"
             for m in messages]
    return "\n".join(lines)


def prompt_completion_record(example: TrainingExample, settings: Settings) -> dict[str, str]:
    """Legacy line: {"prompt": text + separator, "completion": " " + answer + stop}."""
    return {"prompt": render_legacy_prompt(example.messages) + settings.prompt_separator,
            "completion": " " + example.completion + settings.completion_stop}


def write_chat_jsonl(examples: Iterable[TrainingExample], path: Path, *, with_metadata: bool = True) -> int:
    return _write_jsonl((e.chat_record(with_metadata=with_metadata) for e in examples), path)


def write_prompt_completion_jsonl(examples: Iterable[TrainingExample], path: Path, settings: Settings) -> int:
    return _write_jsonl((prompt_completion_record(e, settings) for e in examples), path)


def _write_jsonl(records: Iterable[dict[str, Any]], path: Path) -> int:
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, sort_keys=False) + "\n")
            n += 1
    return n
