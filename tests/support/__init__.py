"""Helpers the tests share, imported one way: ``from support.<module> import …``.

servers: listening sockets handed to servers (no port races) and one bounded readiness wait;
browser: headless Chromium and a live server for the UI tests; lora_adapters: tiny adapters that
memorise a fact; retrain: API keys and training files for the job tests; distill and teacher_server:
a local OpenAI-compatible teacher for the distillation tests.
"""
