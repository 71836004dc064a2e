"""The golden set: questions admins curate that every candidate must answer correctly (gate 3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlmodel import Session, col, select

from registry.models import GoldenExample
from tuneloop.core import errors
from tuneloop.core.accounts.service import audit


class GoldenNotFoundError(errors.NotFoundError):
    code = "not_found"


def add_golden(session: Session, *, question: str, answer: str, key_facts: Sequence[str] = (),
               actor: str) -> GoldenExample:
    question, answer = question.strip(), answer.strip()
    if not question or not answer:
        raise errors.InvalidInputError("a golden example needs both a question and an answer", param="question")
    facts = [f.strip() for f in key_facts if f.strip()]
    example = GoldenExample(question=question, answer=answer, key_facts=facts, created_by=actor)
    session.add(example)
    audit(session, actor=actor, action="golden.added", object_type="goldenexample", object_id=example.id,
          question=question)
    session.flush()
    return example


def list_golden(session: Session) -> list[GoldenExample]:
    """Oldest first, so the list reads in the order it was built."""
    return list(session.exec(select(GoldenExample).order_by(col(GoldenExample.created_at), col(GoldenExample.id))))


def remove_golden(session: Session, golden_id: str, *, actor: str) -> None:
    example = session.get(GoldenExample, golden_id)
    if example is None:
        raise GoldenNotFoundError(f"no golden example {golden_id!r}; list them with `tuneloop golden list`")
    session.delete(example)
    audit(session, actor=actor, action="golden.removed", object_type="goldenexample", object_id=golden_id,
          question=example.question)
    session.flush()


def golden_as_dict(example: GoldenExample) -> dict[str, Any]:
    return {"id": example.id, "object": "golden_example", "question": example.question, "answer": example.answer,
            "key_facts": example.key_facts, "created_by": example.created_by,
            "created_at": example.created_at.isoformat()}
