"""The repetition guard of greedy decoding: a reply never repeats a sentence, nor loops on a phrase.

Greedy decoding of a small model can fall into a loop: the right sentence, then the same wrong
sentence eight times until max_tokens (seen in the web chat), or "climber and climber's partner,
climber and ..." inside one sentence. Sampling rarely loops, so only greedy requests are guarded.

The reply stops, instead of being steered elsewhere: what follows a loop's first turn is rarely
worth reading. Text that might turn out to be a repeat is held back from the stream until it either
diverges or is confirmed, so a streamed reply never shows the repeat it is then cut off at:

* **sentences**: a completed sentence (ending in . ! ? or a line break) that equals an earlier one
  (case and spacing aside) ends the reply before it; while the unfinished sentence is still the
  beginning of an earlier one, it is held back;
* **phrases**: the last ``ngram`` tokens occurring earlier in the reply end it before them; the
  longest suffix shorter than that which occurs earlier is held back.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_BOUNDARY = re.compile(r"[.!?]+(?=\s|$)|\n")


def _key(sentence: str) -> str:
    return " ".join(sentence.lower().split()).strip(" .!?")


def _sentences(text: str) -> tuple[list[tuple[int, str]], int]:
    """([(start, normalised sentence)] of the completed sentences, start of the unfinished rest)."""
    done, start = [], 0
    for match in _BOUNDARY.finditer(text):
        piece = text[start:match.end()]
        if any(c.isalpha() for c in piece):  # "1." of a numbered list is not a sentence
            done.append((start + len(piece) - len(piece.lstrip()), _key(piece)))
        start = match.end()
    return done, start


def repeated_sentence_start(text: str) -> int | None:
    """Where the last completed sentence starts if it repeats an earlier one, else None."""
    done, _rest = _sentences(text)
    if len(done) < 2:
        return None
    last_start, last = done[-1]
    return last_start if any(key == last for _start, key in done[:-1]) else None


def sentence_holdback(text: str) -> int:
    """How much of ``text`` may be shown: all of it, unless the unfinished sentence is still the
    beginning of an earlier sentence (it may be a repeat in the making)."""
    done, rest = _sentences(text)
    tail = _key(text[rest:])
    if tail and any(key.startswith(tail) for _start, key in done):
        return rest + len(text[rest:]) - len(text[rest:].lstrip())
    return len(text)


def repeated_ngram_start(tokens: list[int], n: int) -> int | None:
    """Token index where the last ``n`` tokens start if they occurred earlier in ``tokens``."""
    if n <= 0 or len(tokens) <= n:
        return None
    tail = tokens[-n:]
    return len(tokens) - n if any(tokens[i:i + n] == tail for i in range(len(tokens) - n)) else None


def repeating_suffix(tokens: list[int], n: int) -> int:
    """Length (< n) of the longest suffix of ``tokens`` that also occurs earlier: a loop may be starting."""
    for k in range(min(n - 1, len(tokens) - 1), 0, -1):
        tail = tokens[-k:]
        if any(tokens[i:i + k] == tail for i in range(len(tokens) - k)):
            return k
    return 0


def guard(tokens: list[int], text: str, decode: Callable[[list[int]], str], ngram: int) -> tuple[int, bool]:
    """(characters of ``text`` that may be shown, whether the reply ends there) for a reply so far:
    ``tokens`` generated, ``text`` their decoding, ``decode`` the tokenizer's, ``ngram`` the phrase length."""
    cut = repeated_sentence_start(text)
    if cut is not None:
        return len(text[:cut].rstrip()), True
    start = repeated_ngram_start(tokens, ngram)
    if start is not None:
        return len(decode(tokens[:start]).rstrip()), True
    held = repeating_suffix(tokens, ngram)
    shown = len(decode(tokens[:len(tokens) - held])) if held else len(text)
    return min(shown, sentence_holdback(text)), False
