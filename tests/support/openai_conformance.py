"""The openai client builds its response objects without validation, so a missing required field
passes silently; ``assert_complete`` checks every required field of a parsed object, recursively."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def missing_fields(obj: Any, path: str = "") -> list[str]:
    if isinstance(obj, BaseModel):
        missing = [f"{path}{name}" for name, info in type(obj).model_fields.items()
                   if info.is_required() and name not in obj.model_fields_set]
        for name in type(obj).model_fields:
            missing += missing_fields(getattr(obj, name, None), f"{path}{name}.")
        return missing
    if isinstance(obj, list):
        return [m for i, item in enumerate(obj) for m in missing_fields(item, f"{path}{i}.")]
    return []


def assert_complete(*objects: Any) -> None:
    for obj in objects:
        missing = missing_fields(obj)
        assert not missing, f"{type(obj).__name__} lacks required fields: {missing}"
