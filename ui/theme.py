"""The look shared by every page: system fonts only (nothing is fetched from a CDN), compact CSS."""

from __future__ import annotations

import gradio as gr

SYSTEM_FONTS = ("system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif")
MONO_FONTS = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "Liberation Mono", "monospace")

CSS = """
.tl-header h1 { margin-bottom: 0; }
.tl-muted { color: var(--body-text-color-subdued); font-size: var(--text-sm); }
.tl-status { min-height: 1.5em; }
footer { display: none !important; }
"""


def theme() -> gr.themes.Base:
    """gradio's default theme with system font stacks: plain names are never downloaded, unlike
    ``gr.themes.GoogleFont``, so the pages render the same offline."""
    return gr.themes.Default(primary_hue="blue", font=list(SYSTEM_FONTS), font_mono=list(MONO_FONTS))
