"""The platform's foundation: migrations create every table on both engines, version 0 is in
production on a fresh install, the first admin exists."""

from sqlalchemy import inspect
from sqlmodel import Session, select

from tuneloop import db
from tuneloop.accounts.models import Account, Role


def test_fresh_database_has_schema_base_version_and_admin(make_settings, database_url):
    from bot.versions import production_version
    from tuneloop.app import prepare_database

    settings = make_settings(database_url=database_url)
    engine = prepare_database(settings)
    tables = set(inspect(engine).get_table_names())
    assert {"conversation", "message", "modelversion", "productionpointer", "rating", "correction",
            "datasetsnapshot", "finetunejob", "gatereport", "account", "auditevent"} <= tables
    assert db.current_revision(engine) is not None
    with Session(engine) as session:
        assert production_version(session).id == "v0"
        admins = session.exec(select(Account).where(Account.role == Role.admin)).all()
        assert [a.username for a in admins] == ["admin"]
    # A second start changes nothing.
    prepare_database(settings)
    with Session(engine) as session:
        assert len(session.exec(select(Account)).all()) == 1
    engine.dispose()


def test_engine_batches_match_single_requests(tiny_model_dir):
    from bot.engine import LoadedModel, LocalEngine, SamplingParams, VersionSpec
    from bot.prompting import prompt_ids, with_system_prompt

    loaded = LoadedModel.load(VersionSpec("v0", tiny_model_dir), dtype="float32")
    engine = LocalEngine(loaded, max_batch_size=4)
    try:
        prompts = [prompt_ids(loaded.tokenizer, with_system_prompt("Be brief.", [{"role": "user", "content": q}]))
                   for q in ["hi", "what are your opening hours on a long weekend?", "refund?"]]
        params = SamplingParams(max_tokens=12)
        singles = [engine.generate(p, params) for p in prompts]
        batched = engine.generate_many(prompts, params)
        assert [c.text for c in batched] == [c.text for c in singles]
        assert all(c.completion_tokens >= 1 and c.prompt_tokens == len(p) for c, p in zip(batched, prompts))
    finally:
        engine.close()
