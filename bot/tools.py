"""Tool calling (OpenAI's ``tools``, ``tool_choice``, ``parallel_tool_calls``) on a model served here.

The prompt: a chat template that renders tools itself (it reads ``tools``) is not what the bundled
SmolLM2 has, so the tools are described in the system message in the Hermes layout most open models
are tuned on (``<tools>`` … ``</tools>``, a call is ``<tool_call>{"name": …, "arguments": {…}}</tool_call>``),
an assistant message's ``tool_calls`` are written back the same way and ``tool`` messages keep their
role, which the model's chat template renders like any other turn.

The reply: with ``tool_choice`` ``required`` or a named function, decoding is held to a grammar that
admits only calls of those functions with arguments matching their schemas (``engine.structured``),
so the call always parses; with ``auto`` the model may answer or call, and each ``<tool_call>`` block
in the reply is parsed and checked against the function's schema (a block that fails stays text).
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.structured import UnenforceableSchemaError, json_schema_grammar

MAX_PARALLEL_CALLS = 4  # calls in one reply under a grammar (a small model may otherwise never stop)
_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


# --- the request ---------------------------------------------------------------------------------
class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ToolCallFunction(BaseModel):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


def tool_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


# --- what the request asks -------------------------------------------------------------------------
class ToolUse:
    """The tools of one request and how they may be used (``tool_use`` gives none for a request without
    tools or with ``tool_choice`` ``none``). With a named function only that one is shown and callable."""

    def __init__(self, tools: list[Tool], choice: ToolChoice | None, parallel: bool):
        self.tools, self.parallel = {t.function.name: t.function for t in tools}, parallel
        self.order = [t.function.name for t in tools]
        self.required = choice == "required" or isinstance(choice, NamedToolChoice)
        self.callable = [choice.function.name] if isinstance(choice, NamedToolChoice) else list(self.tools)

    def system_text(self) -> str:
        """What the system message gains: the functions and how to call them."""
        described = "\n".join(json.dumps({"type": "function", "function": self.tools[name].model_dump(exclude_none=True)},
                                          ensure_ascii=False) for name in self.callable)
        return ("\n\n# Tools\n\nYou may call one or more functions to assist with the user query. The functions are "
                f"listed within <tools></tools>:\n<tools>\n{described}\n</tools>\n\nTo call a function, reply with "
                "a JSON object holding its name and arguments within <tool_call></tool_call> tags:\n<tool_call>\n"
                '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')

    def grammar(self) -> str | None:
        """With ``required`` or a named function: the grammar of the reply (only calls); else None."""
        if not self.required:
            return None
        calls = {"anyOf": [_call_schema(name, self.tools[name].parameters) for name in self.callable]}
        try:
            rules = json_schema_grammar(calls, param="tools")
        except UnenforceableSchemaError as exc:  # name the tool's parameters, not our wrapper schema
            raise UnenforceableSchemaError(str(exc), param=self._blamed(exc.param)) from exc
        rules = re.sub(r"^root ::=", "tool-call ::=", rules, flags=re.M)
        block = r'"<tool_call>\n" tool-call "\n</tool_call>"'
        more = f' ("\\n" {block}){{0,{MAX_PARALLEL_CALLS - 1}}}' if self.parallel else ""
        return f"root ::= {block}{more}\n{rules}"

    def _blamed(self, path: str) -> str:
        """``tools.anyOf.1.properties.arguments.x`` (the grammar's schema) → ``tools.3.function.parameters.x``."""
        match = re.match(r"tools\.anyOf\.(\d+)\.properties\.arguments(.*)", path)
        if not match:
            return path
        return f"tools.{self.order.index(self.callable[int(match.group(1))])}.function.parameters{match.group(2)}"

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """(content, tool calls) of a reply: each valid ``<tool_call>`` block becomes a call (only the first
        without ``parallel_tool_calls``); the rest of the text is the content (None if nothing is left)."""
        calls, rest = [], text
        for match in _CALL_RE.finditer(text):
            call = self._valid_call(match.group(1))
            if call is not None:  # without parallel_tool_calls, calls after the first are dropped
                calls += [call] if self.parallel or not calls else []
                rest = rest.replace(match.group(0), "", 1)
        content = rest.strip() if calls else text
        return (content or None), calls

    def _valid_call(self, raw: str) -> ToolCall | None:
        try:
            call = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(call, dict) or call.get("name") not in self.callable:
            return None
        arguments = call.get("arguments", {})
        if schema_errors(arguments, self.tools[call["name"]].parameters or {"type": "object"}):
            return None
        return ToolCall(id=tool_call_id(), function=ToolCallFunction(name=call["name"],
                                                                     arguments=json.dumps(arguments, ensure_ascii=False)))


def tool_use(tools: list[Tool] | None, choice: ToolChoice | None, parallel: bool | None) -> ToolUse | None:
    if not tools or choice == "none":
        return None
    return ToolUse(tools, choice, parallel is not False)


def _call_schema(name: str, parameters: dict | None) -> dict:
    return {"type": "object", "properties": {"name": {"const": name}, "arguments": parameters or {"type": "object"}},
            "required": ["name", "arguments"], "additionalProperties": False}


# --- messages ----------------------------------------------------------------------------------------
def with_tools(messages: list[dict[str, str]], use: ToolUse | None, default_system: str) -> list[dict[str, str]]:
    """The conversation with the tools described at the end of its system message (the configured
    system prompt's, when the caller sent none)."""
    if use is None:
        return messages
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + use.system_text()}, *messages[1:]]
    return [{"role": "system", "content": default_system + use.system_text()}, *messages]


def call_text(name: str, arguments: str) -> str:
    """An assistant's call as the model writes it (and is shown it again in later turns)."""
    try:
        parsed = json.loads(arguments or "{}")
    except ValueError:
        parsed = arguments
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': parsed}, ensure_ascii=False)}\n</tool_call>"


def schema_errors(value: Any, schema: dict) -> list[str]:
    """Where ``value`` breaks ``schema``, for the keywords tuneloop enforces (``engine.structured``);
    references and ``allOf`` are not followed (a call under a grammar needs no check)."""
    if not isinstance(schema, dict):
        return []
    if "const" in schema and value != schema["const"]:
        return [f"not {schema['const']!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"not one of {schema['enum']}"]
    for key in ("anyOf", "oneOf"):
        if key in schema and all(schema_errors(value, sub) for sub in schema[key]):
            return [f"matches none of {key}"]
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind else []
    if kinds and not any(_is_type(value, k) for k in kinds):
        return [f"not of type {kind}"]
    if isinstance(value, dict):
        errors = [f"{k} is missing" for k in schema.get("required", []) if k not in value]
        properties = schema.get("properties", {})
        for key, item in value.items():
            if key in properties:
                errors += [f"{key}: {e}" for e in schema_errors(item, properties[key])]
            elif schema.get("additionalProperties") is False:
                errors.append(f"{key} is not allowed")
        return errors
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [f"{i}: {e}" for i, item in enumerate(value) for e in schema_errors(item, schema["items"])]
    return []


def _is_type(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    python = {"string": str, "boolean": bool, "object": dict, "array": list, "null": type(None)}.get(kind)
    return python is None or isinstance(value, python)
