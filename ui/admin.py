"""Placeholder until the page is built."""

import gradio as gr


def build_admin(app, sign_in):
    with gr.Blocks(title="admin") as page:
        gr.Markdown("# admin")
    return page
