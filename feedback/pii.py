"""Mask personal data before it can reach training data: e-mail addresses, phone numbers and payment
card numbers (only digit runs that pass the Luhn check, so order numbers survive).

``scrub`` returns the cleaned text and what was masked; the reviewer sees that list (``pii_masked``)
next to the correction, so a false positive (a company hotline, say) is noticed before approval.
Placeholders never match the patterns again, so scrubbing twice changes nothing. The company's own
published contacts (``tuneloop.core.company.company_contacts``: its hotline, e-mail domain and website,
``settings.pii_keep`` and the contacts reviewers kept) are not personal data and are kept: an expert
answer "Call us at 1-800-555-0142" masked to "Call us at 1-[PHONE]" taught the bot to say exactly that.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tuneloop.core.company import company_contacts
from tuneloop.core.settings import Settings

EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
CARD = "[CARD]"

_EMAIL_RE = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
# 13-19 digits, optionally grouped by spaces or dashes (card numbers).
_CARD_RE = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
# International (+CC ...) or grouped national numbers: 7-15 digits with separators or brackets.
_PHONE_RE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){1,4}(?![\w])"
    r"|(?<![\w+])\+\d{8,15}(?!\w)"
)


@dataclass(frozen=True)
class Masked:
    kind: str  # email | phone | card
    preview: str  # enough of the original for a reviewer to recognise it, not enough to reuse it

    def as_dict(self, field: str) -> dict[str, str]:
        return {"field": field, "kind": self.kind, "preview": self.preview}


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _preview(text: str) -> str:
    return text[:2] + "…" + text[-2:] if len(text) > 6 else "…"


def scrub(text: str, keep: Sequence[str] = (), originals: list[str] | None = None) -> tuple[str, list[Masked]]:
    """Return ``text`` with e-mails, card numbers (Luhn-valid) and phone numbers replaced, except
    those containing one of ``keep`` (case-insensitive). ``originals``, when given, receives what
    was replaced (for ``find_contacts``)."""
    found: list[Masked] = []
    kept = [k.lower() for k in keep if k]
    seen = originals if originals is not None else []

    def _email(m: re.Match) -> str:
        if any(k in m.group().lower() for k in kept):
            return m.group()
        found.append(Masked("email", _preview(m.group())))
        seen.append(m.group())
        return EMAIL

    def _card(m: re.Match) -> str:
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            found.append(Masked("card", "…" + digits[-4:]))
            seen.append(m.group())
            return CARD
        return m.group()

    def _phone(m: re.Match) -> str:
        digits = re.sub(r"\D", "", m.group())
        if not 7 <= len(digits) <= 15 or _looks_like_date_or_amount(m.group()) or any(k in m.group() or m.group() in k for k in kept):
            return m.group()
        found.append(Masked("phone", _preview(m.group())))
        seen.append(m.group())
        return PHONE

    text = _EMAIL_RE.sub(_email, text)
    text = _CARD_RE.sub(_card, text)
    text = _PHONE_RE.sub(_phone, text)
    return text, found


def _looks_like_date_or_amount(candidate: str) -> bool:
    # 2024-05-01, 01.05.2024 and 1.000.000 are not phone numbers.
    return bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}|\d{1,3}(?:[.,]\d{3})+", candidate))


def find_contacts(text: str, keep: Sequence[str] = ()) -> list[tuple[Masked, str]]:
    """What ``scrub`` would mask in ``text``, with the original values, text unchanged."""
    originals: list[str] = []
    _, found = scrub(text, keep, originals)
    return list(zip(found, originals))


def scrub_fields(fields: dict[str, str], keep: Sequence[str] = ()) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Scrub several named texts at once; the masked list says which field each came from."""
    cleaned, masked = {}, []
    for name, value in fields.items():
        cleaned[name], found = scrub(value, keep)
        masked += [m.as_dict(name) for m in found]
    return cleaned, masked


def training_scrubber(settings: Settings) -> Callable[[str], str]:
    """How text enters training data: personal data masked, the company's own contacts kept (the one
    keep list, ``company_contacts``); text as it is when ``scrub_pii`` is off. Read the list once per
    export, not once per text: it includes a file."""
    if not settings.scrub_pii:
        return lambda text: text
    keep = company_contacts(settings)
    return lambda text: scrub(text, keep)[0]
