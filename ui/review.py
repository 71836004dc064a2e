"""Placeholder until the page is built."""

import gradio as gr


def build_review(app, sign_in):
    with gr.Blocks(title="review") as page:
        gr.Markdown("# review")
    return page
