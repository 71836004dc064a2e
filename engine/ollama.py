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

# Ollama speaks Go templates: one per chat-template family, told apart by the turn marker the model's
# own template uses, with the tokens that end a turn there. The bundled model's family is ChatML.
CHATML_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
LLAMA3_TEMPLATE = """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>{{ end }}{{- range .Messages }}{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>{{ end }}{{ end }}<|start_header_id|>assistant<|end_header_id|>

"""
PHI3_TEMPLATE = """{{- if .System }}<|system|>
{{ .System }}<|end|>
{{ end }}{{- range .Messages }}{{- if ne .Role "system" }}<|{{ .Role }}|>
{{ .Content }}<|end|>
{{ end }}{{ end }}<|assistant|>
"""
# Gemma and Mistral have no system turn: their own templates put the system prompt before the first question
GEMMA_TEMPLATE = """{{- $system := .System }}{{- range .Messages }}{{- if eq .Role "user" }}<start_of_turn>user
{{ if $system }}{{ $system }}

{{ $system = "" }}{{ end }}{{ .Content }}<end_of_turn>
{{ else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}<end_of_turn>
{{ end }}{{ end }}<start_of_turn>model
"""
MISTRAL_TEMPLATE = """{{- $system := .System }}{{- range .Messages }}{{- if eq .Role "user" }}[INST] {{ if $system }}\
{{ $system }}

{{ $system = "" }}{{ end }}{{ .Content }}[/INST]{{ else if eq .Role "assistant" }} {{ .Content }}</s>{{ end }}{{ end }}"""
# marker in the model's chat template -> (Ollama template, stop tokens)
TEMPLATE_FAMILIES = {
    "<|im_start|>": (CHATML_TEMPLATE, ("<|im_end|>", "<|im_start|>")),
    "<|start_header_id|>": (LLAMA3_TEMPLATE, ("<|eot_id|>", "<|start_header_id|>")),
    "<start_of_turn>": (GEMMA_TEMPLATE, ("<end_of_turn>", "<start_of_turn>")),
    "<|assistant|>": (PHI3_TEMPLATE, ("<|end|>", "<|user|>", "<|assistant|>")),
    "[INST]": (MISTRAL_TEMPLATE, ("[INST]", "[/INST]")),
}


def export_gguf(spec: VersionSpec, settings: Settings, target: Path) -> Path:
    """A standalone GGUF of ``spec`` at ``target`` (a file path or a directory for ``model.gguf``)."""
    target = target / "model.gguf" if target.is_dir() or target.suffix != ".gguf" else target
    _writable(target.parent)
    source = ensure_gguf(spec, settings)
    staging = target.with_name(f".{target.name}.{os.getpid()}.partial")
    shutil.copyfile(source, staging)
    os.replace(staging, target)
    return target


def write_modelfile(gguf: Path, directory: Path, *, system_prompt: str, chat_template: str | None,
                   stop_tokens: tuple[str, ...] = ()) -> Path:
    """An Ollama Modelfile beside (or pointing at) ``gguf``: the Go template of the model's chat-template
    family, the system prompt, and its stop tokens (the family's and ``stop_tokens``: the model's own
    end-of-turn tokens, from its files)."""
    family = next((f for marker, f in TEMPLATE_FAMILIES.items() if chat_template and marker in chat_template),
                  None if chat_template else TEMPLATE_FAMILIES["<|im_start|>"])
    if family is None:
        raise InvalidInputError("Ollama templates are written for ChatML, Llama 3, Gemma, Phi-3 and Mistral chat "
                                "templates; write the Modelfile's TEMPLATE by hand for this model.", param="ollama")
    template, family_stops = family
    _writable(directory)
    source = os.path.relpath(gguf, directory) if gguf.parent == directory else str(gguf.resolve())
    quoted = system_prompt.replace('"""', "'''")
    stops = "".join(f'PARAMETER stop "{token}"\n' for token in dict.fromkeys([*family_stops, *stop_tokens]))
    body = (f"FROM ./{source}\n" if not os.path.isabs(source) else f"FROM {source}\n") + \
        f'TEMPLATE """{template}"""\n' + \
        f'SYSTEM """{quoted}"""\n' + stops + "PARAMETER temperature 0\n"
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
