"""`tuneloop init`: the first start of a new company. Asks for the company's name, the bot's
persona and the company's own published contacts, and saves them as settings in ``.env``."""

from __future__ import annotations

from pathlib import Path

import typer

init_app = typer.Typer()


@init_app.command("init")
def init(
    company: str = typer.Option(None, help="Company name, as the bot introduces it."),
    persona: str = typer.Option(None, help="How the bot should come across."),
    hotline: str = typer.Option(None, help="Your published phone number (kept, never masked as personal data)."),
    email_domain: str = typer.Option(None, help="Your e-mail domain, e.g. example.com (kept, never masked)."),
    website: str = typer.Option(None, help="Your web address (kept, never masked)."),
    env_file: Path = typer.Option(Path(".env"), help="Where the settings are saved (read by every tuneloop process)."),
) -> None:
    """Set up tuneloop for your company (asks for what is not given as an option)."""
    from tuneloop.core.company import DEFAULT_PERSONA, CompanyProfile, save_profile
    from tuneloop.core.settings import get_settings

    current = get_settings()
    name = company if company is not None else typer.prompt("Company name", default=current.company_name or None)
    if not name.strip():
        raise typer.BadParameter("the company name must not be empty", param_hint="--company")
    profile = CompanyProfile(
        company_name=name.strip(),
        bot_persona=(persona if persona is not None else typer.prompt(
            "The bot is", default=current.bot_persona or DEFAULT_PERSONA)).strip(),
        company_hotline=_ask(hotline, "Published hotline (empty: none)", current.company_hotline),
        company_email_domain=_ask(email_domain, "E-mail domain (empty: none)", current.company_email_domain),
        company_website=_ask(website, "Web address (empty: none)", current.company_website),
    )
    path = save_profile(profile, env_file)
    get_settings.cache_clear()
    contacts = ", ".join(c for c in (profile.company_hotline, profile.company_email_domain, profile.company_website) if c)
    typer.echo(f"saved {profile.company_name!r} to {path}; contacts kept in corrections and training data: "
               f"{contacts or 'none'}")


def _ask(given: str | None, question: str, default: str) -> str:
    if given is not None:
        return given.strip()
    return typer.prompt(question, default=default, show_default=bool(default)).strip()
