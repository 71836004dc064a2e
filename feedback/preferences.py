"""Corrections as preference pairs (OpenAI's DPO format): the answer a reviewer corrected is the
non-preferred output, its approved correction the preferred one, under the same context.

One line per approved correction of a conversation message whose answer differs from the correction::

    {"input": {"messages": [system, ...turns..., user]},
     "preferred_output": [{"role": "assistant", "content": <correction>}],
     "non_preferred_output": [{"role": "assistant", "content": <the corrected answer>}]}

Knowledge corrections (no conversation message) have no rejected answer and are left out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlmodel import Session

from bot.models import Message
from feedback.corrections.service import approved_corrections
from feedback.examples import PreferencePair
from feedback.export import correction_example
from feedback.pii import training_scrubber
from tuneloop.core.settings import Settings


def preference_records(session: Session, settings: Settings, tokenizer: Any = None,
                       correction_ids: set[str] | None = None) -> list[dict[str, Any]]:
    """``preference_pairs`` as OpenAI's DPO lines."""
    return [pair.to_record() for pair in preference_pairs(session, settings, tokenizer, correction_ids)]


def preference_pairs(session: Session, settings: Settings, tokenizer: Any = None,
                     correction_ids: set[str] | None = None) -> list[PreferencePair]:
    """A pair per approved correction of an answer; ``correction_ids``: only those corrections (e.g. the
    ones a dataset snapshot holds)."""
    pairs, clean = [], training_scrubber(settings)
    for correction in approved_corrections(session):
        if correction_ids is not None and correction.id not in correction_ids:
            continue
        original = session.get(Message, correction.message_id) if correction.message_id else None
        if original is None or original.role != "assistant":
            continue
        rejected = clean(original.content)
        example = correction_example(session, settings, correction, tokenizer)
        if rejected.strip() and rejected.strip() != example.completion.strip():
            pairs.append(PreferencePair(example.messages, example.completion, rejected, correction.id))
    return pairs


def write_preference_jsonl(records: list[dict[str, Any]], path: Path) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(records)
