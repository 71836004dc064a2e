"""Exporting a version for other tools: one standalone GGUF (adapter merged) and, for Ollama, a
Modelfile with the model's chat template, system prompt and stop tokens, so ``ollama create NAME -f
Modelfile`` works in that directory. Every file is written under a temporary name and renamed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from engine.gguf_files import ensure_gguf
from engine.protocol import VersionSpec
from tuneloop.core.errors import InvalidInputError
from tuneloop.core.settings import Settings

# Ollama speaks Go templates; the bundled model's chat template is ChatML.
CHATML_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""


def export_gguf(spec: VersionSpec, settings: Settings, target: Path) -> Path:
    """A standalone GGUF of ``spec`` at ``target`` (a file path or a directory for ``model.gguf``)."""
    target = target / "model.gguf" if target.is_dir() or target.suffix != ".gguf" else target
    _writable(target.parent)
    source = ensure_gguf(spec, settings)
    staging = target.with_name(f".{target.name}.{os.getpid()}.partial")
    shutil.copyfile(source, staging)
    os.replace(staging, target)
    return target


def write_modelfile(gguf: Path, directory: Path, *, system_prompt: str, chat_template: str | None) -> Path:
    """An Ollama Modelfile beside (or pointing at) ``gguf``: template, system prompt, stop tokens."""
    if chat_template and "<|im_start|>" not in chat_template:
        raise InvalidInputError("Only ChatML chat templates (<|im_start|> … <|im_end|>) can be written as an "
                                "Ollama TEMPLATE; write the Modelfile by hand for this model.", param="ollama")
    _writable(directory)
    source = os.path.relpath(gguf, directory) if gguf.parent == directory else str(gguf.resolve())
    quoted = system_prompt.replace('"""', "'''")
    body = (f"FROM ./{source}\n" if not os.path.isabs(source) else f"FROM {source}\n") + \
        f'TEMPLATE """{CHATML_TEMPLATE}"""\n' + \
        f'SYSTEM """{quoted}"""\n' + \
        'PARAMETER stop "<|im_end|>"\nPARAMETER stop "<|im_start|>"\nPARAMETER temperature 0\n'
    target = directory / "Modelfile"
    staging = directory / f".Modelfile.{os.getpid()}.partial"
    staging.write_text(body, encoding="utf-8")
    os.replace(staging, target)
    return target


def _writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"cannot create {directory}: {exc.strerror}; choose a directory you can write to.",
                                param="output") from exc
    if not os.access(directory, os.W_OK):
        raise InvalidInputError(f"{directory} is not writable; choose a directory you can write to.", param="output")
