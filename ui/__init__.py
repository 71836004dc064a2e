"""Gradio pages (web chat, review, admin), mounted into the FastAPI app. UI callbacks call the same
service functions as the API; they never touch the ORM directly."""

from __future__ import annotations

from fastapi import FastAPI

from tuneloop.settings import Settings


def mount_ui(app: FastAPI, settings: Settings) -> FastAPI:
    return app
