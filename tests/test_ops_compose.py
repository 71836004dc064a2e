"""compose.yaml, checked without a Docker engine (none runs on our development machines): it
parses, every service that depends on another names a defined one, the tuneloop services use
only settings that exist, and the gpu and vllm profiles are there."""

from __future__ import annotations

from pathlib import Path

import yaml

from tuneloop.core.settings import Settings

COMPOSE = yaml.safe_load((Path(__file__).resolve().parents[1] / "compose.yaml").read_text())


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    return env if isinstance(env, dict) else dict(item.split("=", 1) for item in env)


def test_services_depend_on_defined_services_and_volumes():
    services = COMPOSE["services"]
    assert {"postgres", "serve", "worker"} <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on") or []:
            assert dependency in services, f"{name} depends on undefined service {dependency}"
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            if not source.startswith((".", "/")):
                assert source in COMPOSE["volumes"], f"{name} mounts undefined volume {source}"
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["serve"]


def test_tuneloop_services_set_only_known_settings_and_share_one_database():
    known = {name.upper() for name in Settings.model_fields}
    urls = set()
    for name, service in COMPOSE["services"].items():
        env = _environment(service)
        for key in env:
            if key.startswith("TUNELOOP_"):
                assert key.removeprefix("TUNELOOP_") in known, f"{name}: {key} is not a tuneloop setting"
        if "TUNELOOP_DATABASE_URL" in env:
            urls.add(env["TUNELOOP_DATABASE_URL"])
    assert len(urls) == 1 and next(iter(urls)).startswith("postgresql")


def test_gpu_and_vllm_profiles():
    profiles = {name: service.get("profiles") or [] for name, service in COMPOSE["services"].items()}
    assert any("gpu" in p for p in profiles.values()) and any("vllm" in p for p in profiles.values())
    assert not profiles["serve"] and not profiles["worker"]  # the default stack needs no profile
