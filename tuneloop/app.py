"""The app factory: one FastAPI app with every package's routes and the Gradio UI mounted.

Nothing is created at import time; ``create_app(settings)`` builds the database engine, applies
migrations, makes sure a production version exists and starts loading it in the background
(``/readyz`` answers 503 until it is loaded).
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

import tuneloop  # noqa: F401  (sets the offline environment first)
from tuneloop import schema
from tuneloop.core import db as database
from tuneloop.core.errors import install_error_handlers, install_not_found_routes
from tuneloop.core.settings import Settings, get_settings
from tuneloop.core.deps import current_account

log = logging.getLogger(__name__)


def prepare_database(settings: Settings):
    """Engine + migrations + version 0 + first admin. Shared by the server, the worker and the CLI."""
    from registry.versions import ensure_base_version
    from tuneloop.core.accounts.service import ensure_first_admin
    from tuneloop.ops.private_data import warn_if_exposed

    warn_if_exposed(settings.data_dir)

    db = database.make_engine(settings.database_url)
    with database.setup_lock(db):  # several processes may start at once on a blank database
        schema.upgrade(db)
        with database.session_scope(db) as session:
            ensure_base_version(session, settings)
            one_time = ensure_first_admin(session, settings.admin_username, settings.admin_password)
    if one_time:
        print(
            f"tuneloop: created admin account {settings.admin_username!r} with one-time password: {one_time}\n"
            "          (shown once; set TUNELOOP_ADMIN_PASSWORD to choose it yourself)",
            flush=True,
        )
    return db


def create_app(settings: Settings | None = None, *, load_model: bool = True, mount_ui: bool = True) -> FastAPI:
    from bot.runtime import ServingRuntime
    from engine.backends import servable_settings

    settings = servable_settings(settings or get_settings())  # llama.cpp, or says why not and uses transformers
    db = prepare_database(settings)
    runtime = ServingRuntime(settings, db)
    if settings.memory_enabled:
        from feedback.memory.service import CorrectionMemory

        runtime.memory = CorrectionMemory(settings, db)  # approved corrections help at once

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if load_model:
            runtime.start(background=True)
        yield
        runtime.stop()

    # current_account on every route: a wrong or revoked key is a 401 even where anonymous use is allowed
    app = FastAPI(title="tuneloop", version=tuneloop.__version__, lifespan=lifespan,
                  dependencies=[Depends(current_account)])
    app.state.settings = settings
    app.state.db = db
    app.state.runtime = runtime
    install_error_handlers(app)
    from tuneloop.ops.observability import install_observability
    from tuneloop.core.protection import install_protection

    install_protection(app, settings)  # inner: limits and body size
    install_observability(app, settings)  # outer: request id, access log, metrics, GET /metrics

    from bot.routes import router as bot_router
    from feedback.routes import router as feedback_router
    from registry.routes import router as registry_router
    from retrain.routes import router as retrain_router
    from tuneloop.core.account_routes import router as accounts_router

    app.include_router(bot_router)
    app.include_router(feedback_router)
    app.include_router(registry_router)
    app.include_router(retrain_router)
    app.include_router(accounts_router)
    install_not_found_routes(app)  # after every router: it answers the /v1 paths none of them has
    if mount_ui:
        from ui import mount_ui as _mount_ui

        app = _mount_ui(app, settings)
    return app
