"""User text shown on the staff and admin pages as text, never as HTML or Markdown.

Chat messages, rating comments, questions and answers come from anonymous customers: rendered as
Markdown, ``<img src=…>`` or ``![](…)`` would make a staff member's browser fetch an attacker's URL
the moment the item is opened. ``as_text`` escapes both languages; the page's CSP (``ui.headers``)
is the second line of defence.
"""

from __future__ import annotations

import html
import re

_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>$:])")


def as_text(value: object) -> str:
    """``value`` escaped so that gradio's Markdown (and its HTML sanitizer) shows it literally."""
    text = html.escape(str(value if value is not None else ""), quote=True)
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", text)
