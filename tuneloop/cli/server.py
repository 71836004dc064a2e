"""`tuneloop serve` and `tuneloop db upgrade`."""

from __future__ import annotations

import typer

from tuneloop.core.settings import get_settings

serve_app = typer.Typer()
db_app = typer.Typer(help="Database schema: migrations are applied on startup, or here by hand.", no_args_is_help=True)


@serve_app.command("serve")
def serve(
    host: str = typer.Option(None, help="Interface to listen on (default: TUNELOOP_HOST, 127.0.0.1)."),
    port: int = typer.Option(None, help="Port (default: TUNELOOP_PORT, 8000)."),
    workers: int = typer.Option(1, help="API processes; each follows the production pointer on its own."),
    reload: bool = typer.Option(False, help="Restart on code changes (development)."),
    fd: int = typer.Option(None, help="Serve on this already-listening socket instead of HOST:PORT (systemd "
                                      "socket activation; one process)."),
) -> None:
    """Start the API and the web chat (http://HOST:PORT/). The first start converts the bundled model once."""
    import uvicorn

    settings = get_settings()
    host, port = host or settings.host, port or settings.port
    if fd is not None:
        typer.echo(f"tuneloop: serving on socket fd {fd}  (chat UI at /, API at /v1, docs at /docs)")
        uvicorn.run("tuneloop.cli.server:asgi_app", factory=True, fd=fd, log_level="info", **proxy_options(settings))
        return
    typer.echo(f"tuneloop: serving on http://{host}:{port}/  (chat UI at /, API at /v1, docs at /docs)")
    uvicorn.run("tuneloop.cli.server:asgi_app", factory=True, host=host, port=port, workers=workers,
                reload=reload, log_level="info", **proxy_options(settings))


def proxy_options(settings) -> dict:
    """uvicorn's proxy-header options from ``trusted_proxies``. uvicorn itself trusts X-Forwarded-For from
    127.0.0.1 by default, so any local client (or one behind a proxy it does not know about) could choose
    its address and with it a fresh rate-limit bucket and sign-in budget; with no trusted proxies the
    headers are not read at all."""
    trusted = settings.trusted_proxies.strip()
    return {"proxy_headers": bool(trusted), "forwarded_allow_ips": trusted or None}


def asgi_app():
    from tuneloop.app import create_app

    return create_app(get_settings())


@db_app.command("upgrade")
def upgrade(revision: str = typer.Argument("head", help="Target migration (default: the newest).")) -> None:
    """Apply database migrations up to REVISION."""
    from tuneloop.core import db
    from tuneloop import schema

    settings = get_settings()
    database = db.make_engine(settings.database_url)
    schema.upgrade(database, revision)
    typer.echo(f"database at revision {schema.current_revision(database)} ({database.url.render_as_string()})")
