"""The real SmolLM2 behind the API knows the capital of France.

The request brings its own system message: with the default customer-service persona for "Acme Outdoor
Gear", the 135M model answers this off-topic question in confused French (measured), which is a fact
about the tiny model, not about serving."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_smollm2_answers_paris(make_settings, real_model_dir, sqlite_url):
    from fastapi.testclient import TestClient
    from openai import OpenAI

    from tuneloop.app import create_app

    settings = make_settings(base_model=str(real_model_dir), database_url=sqlite_url)
    app = create_app(settings, load_model=False, mount_ui=False)
    app.state.runtime.start(background=False)
    try:
        with TestClient(app) as client:
            openai = OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0)
            answer = openai.chat.completions.create(
                model="tuneloop", messages=[{"role": "system", "content": "You are a helpful assistant."},
                                   {"role": "user", "content": "What is the capital of France?"}],
                max_tokens=30)
            assert "Paris" in answer.choices[0].message.content
            stored = client.get(f"/v1/conversations/{answer.model_extra['conversation_id']}",
                                headers={"X-Conversation-Token": answer.model_extra["conversation_token"]}).json()
            assert [m["role"] for m in stored["messages"]] == ["system", "user", "assistant"]
            assert stored["messages"][-1]["content"] == answer.choices[0].message.content
    finally:
        app.state.runtime.stop()
        app.state.db.dispose()
