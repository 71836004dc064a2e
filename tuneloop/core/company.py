"""The company the bot speaks for: its name, the bot's persona and the company's own published
contacts (hotline, e-mail domain, web address). Those contacts are not personal data: the PII
scrubber keeps them, so the bot is never taught to say "You can call us at [PHONE]".

``tuneloop init`` asks for the profile and saves it as settings in ``.env`` (TUNELOOP_COMPANY_*),
which every process reads; contacts a reviewer chooses to *keep* in a correction are added to
``<data_dir>/company_contacts.json``, shared by the API processes and the worker. The demo
company (Acme) exists only under ``tuneloop demo``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tuneloop.core.settings import Settings


@dataclass(frozen=True)
class CompanyProfile:
    company_name: str
    bot_persona: str
    company_hotline: str = ""
    company_email_domain: str = ""
    company_website: str = ""


DEFAULT_PERSONA = "a friendly, concise customer-service assistant"
DEMO_PROFILE = CompanyProfile("Acme Outdoor Gear", DEFAULT_PERSONA, "1-800-555-0142", "acmeoutdoor.example",
                              "www.acmeoutdoor.example")
_ENV_NAMES = {name: f"TUNELOOP_{name.upper()}" for name in CompanyProfile.__dataclass_fields__}


def kept_contacts_file(settings: Settings) -> Path:
    return settings.data_dir / "company_contacts.json"


def company_contacts(settings: Settings) -> list[str]:
    """Everything the scrubber keeps: the profile's contacts, ``pii_keep`` and contacts kept in reviews."""
    values = [settings.company_hotline, settings.company_email_domain, _host(settings.company_website),
              *settings.pii_keep, *_kept(settings)]
    return list(dict.fromkeys(v.strip() for v in values if v and v.strip()))


def keep_contacts(settings: Settings, values: list[str]) -> list[str]:
    """Add contacts a reviewer said are the company's own (not personal data); returns the new list."""
    path = kept_contacts_file(settings)
    kept = list(dict.fromkeys([*_kept(settings), *(v.strip() for v in values if v.strip())]))
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".json.partial")
    staging.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n")
    staging.replace(path)
    return kept


def save_profile(profile: CompanyProfile, env_file: Path = Path(".env")) -> Path:
    """Write the profile into ``env_file`` (other lines are kept), where Settings reads it."""
    lines = env_file.read_text().splitlines() if env_file.is_file() else []
    names = set(_ENV_NAMES.values())
    lines = [line for line in lines if line.split("=", 1)[0].strip() not in names]
    lines += [f"{_ENV_NAMES[name]}={json.dumps(getattr(profile, name), ensure_ascii=False)}"
              for name in CompanyProfile.__dataclass_fields__]
    env_file.write_text("\n".join(lines) + "\n")
    return env_file


def is_configured(settings: Settings) -> bool:
    return bool(settings.company_name.strip())


def _kept(settings: Settings) -> list[str]:
    path = kept_contacts_file(settings)
    try:
        values = json.loads(path.read_text()) if path.is_file() else []
    except (OSError, ValueError):
        return []
    return [v for v in values if isinstance(v, str)]


def _host(url: str) -> str:
    return re.sub(r"^[a-z]+://", "", (url or "").strip(), flags=re.I).split("/")[0]
