"""Writes one version's GGUF in a process of its own: ``python -m engine.gguf_writer``.

Merging a LoRA adapter needs the transformers model, which needs torch: ~400 MB that a llama.cpp
serving process would otherwise keep for the rest of its life to write one file. ``ensure_gguf``
(``engine.gguf_files``) runs this module as a child process instead, so serving never imports torch
and the memory is returned when the child exits. The file is written under a temporary name and
renamed into place (``write_gguf``). The exit status says what went wrong
(``WRITER_EXIT_MISSING``, ``WRITER_EXIT_INVALID`` in ``engine.gguf_files``); the last line on stderr
says why.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.gguf_files import WRITER_EXIT_INVALID, WRITER_EXIT_MISSING, write_gguf
from engine.modelstore import ModelNotFoundError
from engine.protocol import VersionSpec
from engine.transformers_model import LoadedModel
from tuneloop.core.errors import InvalidInputError


def write_version_gguf(spec: VersionSpec, target: Path, quantization: str) -> Path:
    """Load ``spec`` (adapter merged, float32) and write it as a GGUF at ``target``."""
    loaded = LoadedModel.load(spec, device="cpu", dtype="float32")
    return write_gguf(loaded.model, loaded.tokenizer, target, quantization=quantization, name=spec.id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.gguf_writer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--id", required=True, help="the version's id (written as the model's name)")
    parser.add_argument("--base", required=True, type=Path, help="the base model directory")
    parser.add_argument("--adapter", type=Path, help="the LoRA adapter directory to merge, if any")
    parser.add_argument("--out", required=True, type=Path, help="the GGUF file to write")
    parser.add_argument("--quantization", default="Q8_0", help="F32, F16, Q8_0 or Q4_1")
    args = parser.parse_args(argv)
    try:
        write_version_gguf(VersionSpec(args.id, args.base, args.adapter), args.out, args.quantization)
    except ModelNotFoundError as exc:
        print(exc, file=sys.stderr)
        return WRITER_EXIT_MISSING
    except InvalidInputError as exc:
        print(exc, file=sys.stderr)
        return WRITER_EXIT_INVALID
    return 0


if __name__ == "__main__":
    sys.exit(main())
