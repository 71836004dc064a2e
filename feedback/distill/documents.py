"""Documents a teacher writes questions about (`tuneloop distill docs`): Markdown, plain text and PDF
(text extracted with pypdf; scanned PDFs without a text layer need OCR first), cut into chunks of
about ``CHUNK_CHARS`` characters along headings and paragraphs. Each chunk remembers its file and
where in it it came from (heading or pages), so every generated pair can show its source."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from feedback.errors import FeedbackError

CHUNK_CHARS = 2400  # ~600 tokens: enough context for a few questions, small enough to stay grounded
TEXT_SUFFIXES = (".md", ".markdown", ".txt", ".text")
SUFFIXES = (*TEXT_SUFFIXES, ".pdf")
_HEADING_RE = re.compile(r"^#{1,6}\s+(.*)$")


@dataclass
class Chunk:
    file: str
    index: int  # position in its file
    location: str  # heading or pages
    text: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def read_chunks(paths: list[Path], *, max_chars: int = CHUNK_CHARS) -> list[Chunk]:
    """Every file's chunks in order; a FeedbackError names the first file that cannot be used."""
    if not paths:
        raise FeedbackError("give at least one document (.md, .txt or .pdf)")
    chunks: list[Chunk] = []
    for path in map(Path, paths):
        blocks = _blocks(path)
        packed = _pack(blocks, max_chars)
        if not packed:
            raise FeedbackError(f"{path.name}: no text found" + (
                " (a scanned PDF? run OCR on it first)" if path.suffix.lower() == ".pdf" else ""))
        chunks += [Chunk(path.name, i, location, text) for i, (location, text) in enumerate(packed)]
    return chunks


def _blocks(path: Path) -> list[tuple[str, str]]:
    """(location, paragraph) in reading order."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise FeedbackError(f"{path.name}: unsupported document type {suffix or '(none)'!r}; "
                            f"use {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise FeedbackError(f"{path}: no such file")
    if suffix == ".pdf":
        return _pdf_blocks(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    markdown = suffix in (".md", ".markdown")
    blocks, heading = [], path.stem
    for paragraph in re.split(r"\n\s*\n", text):
        lines = []
        for line in paragraph.strip().splitlines():
            match = _HEADING_RE.match(line) if markdown else None
            if match:
                heading = match.group(1).strip()
            lines.append(line)
        if lines:
            blocks.append((heading, "\n".join(lines)))
    return blocks


def _pdf_blocks(path: Path) -> list[tuple[str, str]]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        pages = [page.extract_text() or "" for page in PdfReader(path).pages]
    except (PdfReadError, OSError, ValueError) as exc:
        raise FeedbackError(f"{path.name}: cannot read this PDF ({exc})") from exc
    return [(f"page {n}", p.strip()) for n, text in enumerate(pages, 1)
            for p in re.split(r"\n\s*\n", text) if p.strip()]


def _pack(blocks: list[tuple[str, str]], max_chars: int) -> list[tuple[str, str]]:
    """Consecutive paragraphs joined up to ``max_chars``; longer paragraphs cut at whitespace."""
    chunks: list[tuple[str, str]] = []
    places: list[str] = []
    parts: list[str] = []
    for where, text in blocks:
        for piece in _cut(text, max_chars):
            if parts and sum(len(p) + 2 for p in parts) + len(piece) > max_chars:
                chunks.append((_location(places), "\n\n".join(parts)))
                places, parts = [], []
            places.append(where)
            parts.append(piece)
    if parts:
        chunks.append((_location(places), "\n\n".join(parts)))
    return chunks


def _location(places: list[str]) -> str:
    """The chunk's first heading, or its page range ("pages 2–3")."""
    first, last = places[0], places[-1]
    if first != last and first.startswith("page ") and last.startswith("page "):
        return f"pages {first.split()[-1]}–{last.split()[-1]}"
    return first


def _cut(text: str, max_chars: int) -> list[str]:
    pieces = []
    while len(text) > max_chars:
        cut = text.rfind(" ", 0, max_chars)
        cut = cut if cut > max_chars // 2 else max_chars
        pieces.append(text[:cut].strip())
        text = text[cut:].strip()
    return [*pieces, text] if text else pieces
