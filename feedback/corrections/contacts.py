"""Contacts in staff-written answers are decided, never silently masked.

A customer's question is scrubbed on arrival (``feedback.pii``). A staff member's answer is different:
a phone number or e-mail in it is usually the company's own ("call us at …"), and masking it taught
the bot to say "You can call us at [PHONE]". So contacts detected in an answer or key fact stay in
the text and are listed in ``pii_masked`` with ``decision: "pending"``; the author or the approver
then chooses:

- **keep**: they are the company's contacts; they are added to the company's contacts
  (``tuneloop.core.company.keep_contacts``), so they are never masked anywhere again;
- **mask**: they are personal data; they are replaced by placeholders in place.

A correction with undecided contacts cannot be approved. Bulk paths without a person in the loop
(an admin's import as approved, auto-approved paraphrases) mask as before.
"""

from __future__ import annotations

from typing import Any, Literal

from sqlmodel import Session

from feedback.corrections.models import Correction
from feedback.errors import FeedbackConflictError, FeedbackError
from feedback.pii import find_contacts, scrub, scrub_fields
from tuneloop.core.accounts.service import audit
from tuneloop.core.company import company_contacts, keep_contacts
from tuneloop.core.ids import utcnow
from tuneloop.core.settings import Settings

PENDING = "pending"


def clean_fields(settings: Settings, fields: dict[str, str], *, decide_later: bool) -> tuple[dict, list[dict]]:
    """Scrub the question; with ``decide_later``, only detect contacts in the staff-written fields."""
    keep = company_contacts(settings)
    if not decide_later:
        return scrub_fields(fields, keep)
    cleaned, entries = scrub_fields({"question": fields["question"]}, keep)
    for name, value in fields.items():
        if name == "question":
            continue
        cleaned[name] = value
        entries += [{**found.as_dict(name), "value": original, "decision": PENDING}
                    for found, original in find_contacts(value, keep)]
    return cleaned, entries


def pending(correction: Correction) -> list[dict[str, Any]]:
    return [m for m in correction.pii_masked or [] if m.get("decision") == PENDING]


def require_decided(correction: Correction) -> None:
    undecided = pending(correction)
    if undecided:
        found = ", ".join(f"{m['kind']} {m['preview']} in {m['field']}" for m in undecided)
        raise FeedbackConflictError(f"correction {correction.id} has contacts nobody decided on ({found}): keep them as the "
                            f"company's or mask them (POST /v1/corrections/{correction.id}/contacts) before approving")


def decide(session: Session, settings: Settings, correction: Correction, *, actor: str,
           action: Literal["keep", "mask"]) -> Correction:
    """Apply ``action`` to every undecided contact of ``correction`` (author or reviewer)."""
    undecided = pending(correction)
    if not undecided:
        raise FeedbackConflictError(f"correction {correction.id} has no undecided contacts")
    if action == "keep":
        keep_contacts(settings, [m["value"] for m in undecided])
    elif action == "mask":
        keep = company_contacts(settings)
        correction.answer = scrub(correction.answer, keep)[0]
        correction.key_facts = [scrub(fact, keep)[0] for fact in correction.key_facts]
    else:
        raise FeedbackError(f"action must be 'keep' or 'mask', not {action!r}")
    decided = "kept" if action == "keep" else "masked"
    correction.pii_masked = [{k: v for k, v in m.items() if not (action == "mask" and k == "value")}
                             | ({"decision": decided} if m.get("decision") == PENDING else {})
                             for m in correction.pii_masked]
    correction.updated_at = utcnow()
    session.add(correction)
    audit(session, actor=actor, action=f"correction.contacts_{decided}", object_type="correction",
          object_id=correction.id, contacts=[f"{m['kind']} {m['preview']}" for m in undecided])
    return correction
