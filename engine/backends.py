"""Which engine serves: ``settings.serving_backend`` names one, this table builds it."""

from __future__ import annotations

from collections.abc import Callable

from engine.llamacpp import LlamaCppEngine
from engine.local import TransformersEngine
from engine.protocol import Engine, ServedVersion, VersionSpec
from engine.upstream import UpstreamEngine
from tuneloop.core.errors import InvalidInputError
from tuneloop.core.settings import Settings


def _transformers(settings: Settings, spec_for: Callable[[ServedVersion], VersionSpec]) -> Engine:
    return TransformersEngine(settings, spec_for)


def _llamacpp(settings: Settings, spec_for: Callable[[ServedVersion], VersionSpec]) -> Engine:
    return LlamaCppEngine(settings, spec_for)


def _upstream(settings: Settings, _spec_for: Callable[[ServedVersion], VersionSpec]) -> Engine:
    return UpstreamEngine(settings)


ENGINES: dict[str, Callable[[Settings, Callable[[ServedVersion], VersionSpec]], Engine]] = {
    "llamacpp": _llamacpp,
    "transformers": _transformers,
    "local": _transformers,  # the name this engine had before llama.cpp
    "upstream": _upstream,
}


def engine_for(settings: Settings, spec_for: Callable[[ServedVersion], VersionSpec]) -> Engine:
    """The engine for ``settings.serving_backend``; ``spec_for`` tells a local engine where a version's
    files are (the registry knows)."""
    try:
        factory = ENGINES[settings.serving_backend]
    except KeyError:
        raise InvalidInputError(f"serving_backend={settings.serving_backend!r} is not one of "
                                f"{', '.join(ENGINES)}; set TUNELOOP_ENGINE.",
                                param="serving_backend") from None
    return factory(settings, spec_for)
