"""`tuneloop chat`: talk to the bot in the terminal, in-process or against a running server.

Every turn is stored like any other conversation (channel "cli"), so it shows up in review.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import typer

chat_app = typer.Typer()

HELP = "Commands: /new starts a new conversation, /up or /down [comment] rates the last answer, /quit exits."


@dataclass
class Answer:
    conversation_id: str
    message_id: str
    conversation_token: str | None = None  # a new anonymous conversation's secret: sent back to continue it


class LocalChat:
    """The bot in this process: loads the production model (seconds for the bundled one)."""

    def __init__(self, model: str, max_tokens: int | None):
        from bot.runtime import ServingRuntime
        from tuneloop.app import prepare_database
        from tuneloop.core.settings import get_settings

        settings = get_settings()
        self.model, self.max_tokens = model or settings.production_alias, max_tokens
        self.runtime = ServingRuntime(settings, prepare_database(settings))
        self.runtime.start(background=False)
        if not self.runtime.ready:
            raise ValueError(f"The model could not be loaded: {self.runtime.load_error}")

    def send(self, text: str, conversation_id: str | None, token: str | None = None) -> Iterator[str | Answer]:
        from bot.conversations import start_turn
        from bot.ownership import Caller
        from engine.protocol import SamplingParams

        settings = self.runtime.settings
        params = SamplingParams(max_tokens=self.max_tokens or settings.max_tokens, temperature=settings.temperature,
                                top_p=settings.top_p, repetition_ngram=settings.repetition_guard_ngram)
        turn = start_turn(self.runtime, messages=[{"role": "user", "content": text}], params=params,
                          model=self.model, conversation_id=conversation_id, channel="cli", end_user="cli",
                          caller=Caller(token=token))
        yield from turn
        yield Answer(turn.conversation_id, turn.message_id, turn.conversation_token)

    def rate(self, message_id: str, value: str, comment: str) -> None:
        from feedback.ratings.service import rate_message
        from tuneloop.core.db import session_scope

        with session_scope(self.runtime.db) as session:
            rate_message(session, message_id=message_id, value=value, comment=comment, rater="cli")

    def close(self) -> None:
        self.runtime.stop()


class RemoteChat:
    """A running tuneloop server, through its OpenAI-compatible API."""

    def __init__(self, url: str, api_key: str, model: str, max_tokens: int | None):
        import httpx
        from openai import OpenAI

        self.base = url.rstrip("/").removesuffix("/v1") + "/v1"
        self.client = OpenAI(base_url=self.base, api_key=api_key or "not-needed")
        self.http = httpx.Client(base_url=self.base, timeout=30)
        self.model, self.max_tokens = model or "tuneloop", max_tokens

    def send(self, text: str, conversation_id: str | None, token: str | None = None) -> Iterator[str | Answer]:
        # Only the new message goes out: the server holds the history of conversation_id.
        extra = {"conversation_id": conversation_id, "conversation_token": token} if conversation_id else None
        from openai import omit

        stream = self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": text}], stream=True, user="cli",
            max_tokens=self.max_tokens or omit, extra_body=extra,
        )
        ids = None
        for chunk in stream:
            ids = ids or Answer(chunk.model_extra["conversation_id"], chunk.model_extra["message_id"],
                                chunk.model_extra.get("conversation_token"))
            for choice in chunk.choices:
                if choice.delta.content:
                    yield choice.delta.content
        if ids is not None:
            yield ids

    def rate(self, message_id: str, value: str, comment: str) -> None:
        response = self.http.post(f"/messages/{message_id}/rating",
                                  json={"value": value, "comment": comment, "rater": "cli"})
        if response.status_code != 200:
            raise ValueError(response.json().get("error", {}).get("message", response.text))

    def close(self) -> None:
        self.http.close()


@chat_app.command("chat")
def chat(
    url: str = typer.Option(None, help="A running tuneloop server (e.g. http://127.0.0.1:8000). "
                                       "Default: load the production model in this process."),
    api_key: str = typer.Option("", envvar="TUNELOOP_API_KEY", help="Bearer key for --url, if the server needs one."),
    model: str = typer.Option(None, help="Version id or name to talk to (default: production)."),
    max_tokens: int = typer.Option(None, min=1, help="Longest answer in tokens (default: TUNELOOP_MAX_TOKENS)."),
) -> None:
    """Chat with the bot in the terminal; answers stream as they are generated.

    /new: new conversation.  /up or /down [comment]: rate the last answer.  /quit or Ctrl-D: exit.

    Conversations are stored (channel "cli") and appear in the review queue.
    """
    bot = RemoteChat(url, api_key, model, max_tokens) if url else LocalChat(model, max_tokens)
    typer.echo(HELP)
    conversation_id, token, last = None, None, None
    try:
        while True:
            try:
                line = input("you> ").strip()
            except (EOFError, KeyboardInterrupt):
                typer.echo()
                return
            if not line:
                continue
            if line.startswith("/"):
                command, _, rest = line.partition(" ")
                if command == "/quit":
                    return
                if command == "/new":
                    conversation_id, token, last = None, None, None
                    typer.echo("(new conversation)")
                elif command in ("/up", "/down") and last is not None:
                    bot.rate(last.message_id, command[1:], rest.strip())
                    typer.echo(f"(rated {command[1:]})")
                elif command in ("/up", "/down"):
                    typer.echo("(nothing to rate yet)")
                else:
                    typer.echo(HELP)
                continue
            typer.echo("bot> ", nl=False)
            for piece in bot.send(line, conversation_id, token):
                if isinstance(piece, Answer):
                    conversation_id, last = piece.conversation_id, piece
                    token = piece.conversation_token or token
                else:
                    typer.echo(piece, nl=False)
            typer.echo()
    finally:
        bot.close()
