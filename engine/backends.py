"""Which engine serves: ``settings.serving_backend`` names one, this table builds it.

Each engine's module is imported only when it is chosen: the transformers engine brings torch
(~250 MB), which a process serving through llama.cpp or an upstream server never needs. The table
names the modules as text so that choosing one does not import the others; the three modules are
``engine.llamacpp``, ``engine.transformers_engine`` and ``engine.upstream``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from pathlib import Path

from engine.architectures import model_dir_unsupported_reason
from engine.protocol import Engine, ServedVersion, VersionSpec
from tuneloop.core.errors import InvalidInputError
from tuneloop.core.settings import BUNDLED_BASE_MODEL, Settings

log = logging.getLogger(__name__)

# setting value -> (module, class, whether the class takes spec_for: where a version's files are)
ENGINES: dict[str, tuple[str, str, bool]] = {
    "llamacpp": ("engine.llamacpp", "LlamaCppEngine", True),
    "transformers": ("engine.transformers_engine", "TransformersEngine", True),
    "local": ("engine.transformers_engine", "TransformersEngine", True),  # the name this engine had before llama.cpp
    "upstream": ("engine.upstream", "UpstreamEngine", False),
}


def engine_for(settings: Settings, spec_for: Callable[[ServedVersion], VersionSpec]) -> Engine:
    """The engine for ``settings.serving_backend``; ``spec_for`` tells a local engine where a version's
    files are (the registry knows)."""
    try:
        module, name, local = ENGINES[settings.serving_backend]
    except KeyError:
        raise InvalidInputError(f"serving_backend={settings.serving_backend!r} is not one of "
                                f"{', '.join(ENGINES)}; set TUNELOOP_ENGINE.",
                                param="serving_backend") from None
    engine_class = getattr(importlib.import_module(module), name)
    return engine_class(settings, spec_for) if local else engine_class(settings)


def servable_settings(settings: Settings) -> Settings:
    """``settings`` as a process should serve and gate with them: where llama.cpp is chosen but the base
    model's architecture cannot be written as a GGUF (``engine.architectures``), the same settings with
    transformers serving, said once at start. Reads only the model's ``config.json``."""
    if settings.serving_backend != "llamacpp" or settings.base_model == BUNDLED_BASE_MODEL:
        return settings
    reason = model_dir_unsupported_reason(Path(settings.base_model).expanduser())
    if reason is None:
        return settings
    log.warning("llama.cpp cannot serve TUNELOOP_BASE_MODEL=%s (%s); serving and gating through transformers "
                "instead. Set TUNELOOP_ENGINE=transformers (or upstream, with vLLM) to choose.", settings.base_model, reason)
    return settings.model_copy(update={"serving_backend": "transformers"})
