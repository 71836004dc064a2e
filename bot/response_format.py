"""``response_format`` of a chat request: plain text, any JSON object, or JSON matching a schema.

JSON is enforced while decoding, not hoped for: the request carries a grammar
(``engine.structured``) that the engine applies token by token, so the reply parses whatever the
model (``finish_reason`` "length" aside: a reply cut at ``max_tokens`` is cut). ``strict`` is accepted
either way; the schema is always enforced. A schema keyword the grammar cannot enforce is a 400 that
names it (``param`` ``response_format.json_schema.schema.properties.age.minimum``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from engine.structured import json_object_grammar, json_schema_grammar


class JSONSchema(BaseModel):
    """OpenAI's ``response_format.json_schema``: fields in the order of the reference."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchema | None = None

    _grammar: str | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _build_grammar(self) -> "ResponseFormat":
        if self.type == "json_schema":
            if self.json_schema is None:
                raise ValueError("json_schema is required when type is 'json_schema'")
            self._grammar = json_schema_grammar(self.json_schema.schema_ or {})
        elif self.json_schema is not None:
            raise ValueError(f"json_schema is only read with type 'json_schema', not {self.type!r}")
        elif self.type == "json_object":
            self._grammar = json_object_grammar()
        return self

    @property
    def grammar(self) -> str | None:
        """The GBNF the reply must match; None for text."""
        return self._grammar

    def as_sent(self) -> dict | None:
        """What an upstream server is asked to enforce itself (None for text)."""
        return None if self.type == "text" else self.model_dump(by_alias=True, exclude_none=True)
