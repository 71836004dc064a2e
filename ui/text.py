"""How user and model text is put on gradio's pages.

Staff and admin pages show it as text, never as HTML or Markdown. Chat messages, rating comments,
questions and answers come from anonymous customers: rendered as Markdown, ``<img src=…>`` or
``![](…)`` would make a staff member's browser fetch an attacker's URL the moment the item is opened.
``as_text`` escapes both languages; the page's CSP (``ui.headers``) is the second line of defence.

The public chat shows a customer their own question and the bot's answer with Markdown kept (lists,
bold) but HTML shown as typed (``as_markdown``).
"""

from __future__ import annotations

import html
import re

_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>$:])")


def as_markdown(text: str) -> str:
    """``text`` for gradio's chatbot: Markdown stays Markdown, but ``<``, ``>`` and ``&`` are shown as typed.
    The chatbot keeps unknown tags and drops what follows ``<!--``, so an answer such as "orders <5 kg
    ship free" or a model's stray markup would otherwise lose words or vanish."""
    return html.escape(text, quote=False)


def as_text(value: object) -> str:
    """``value`` escaped so that gradio's Markdown (and its HTML sanitizer) shows it literally."""
    text = html.escape(str(value if value is not None else ""), quote=True)
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", text)
