"""Training examples and dataset snapshots: multi-turn context, PII scrubbing, both file formats,
a deterministic split by lineage, content-hashed immutable snapshots."""

from __future__ import annotations

import json

import pytest
from sqlmodel import Session

from bot.models import Conversation, Message
from feedback.corrections import service as corrections
from feedback.examples import TrainingExample
from feedback.export import prompt_completion_record, training_examples
from feedback.ratings.models import Rating
from retrain import datasets
from tuneloop.core import db


@pytest.fixture
def env(make_settings, database_url):
    from tuneloop.app import prepare_database

    settings = make_settings(database_url=database_url, validation_fraction=0.2)
    engine = prepare_database(settings)
    yield settings, engine
    engine.dispose()


def approve_qa(session, settings, question, answer, **kw):
    corr = corrections.create_correction(session, settings, actor="alice", question=question, answer=answer, **kw)
    corrections.submit_correction(session, corr.id, actor="alice")
    return corrections.approve_correction(session, settings, corr.id, actor="bob")


def test_examples_keep_context_scrub_pii_and_render_both_formats(env):
    settings, engine = env
    with db.session_scope(engine) as session:
        conv = Conversation()
        session.add(conv)
        turns = [("user", "Hi, I'm jane@example.com"), ("assistant", "Hello Jane!"),
                 ("user", "can i retrun boots"), ("assistant", "No.")]
        msgs = [Message(conversation_id=conv.id, position=i, role=r, content=c) for i, (r, c) in enumerate(turns)]
        session.add_all(msgs)
        liked = Conversation()
        session.add(liked)
        session.add_all([Message(id="msg_liked", conversation_id=liked.id, position=0, role="user", content="Hours?"),
                         Message(id="msg_liked_a", conversation_id=liked.id, position=1, role="assistant",
                                 content="9 to 5.")])
        session.flush()
        session.add(Rating(message_id="msg_liked_a", value=1))
        approve_qa(session, settings, "Can I return boots?", "Yes, within 30 days.", message_id=msgs[3].id,
                   key_facts=["30 days"])
        approve_qa(session, settings, "Do you sell tents?", "Yes.")
    with Session(engine) as session:
        examples = training_examples(session, settings)
        with_likes = training_examples(session, settings.model_copy(update={"include_thumbs_up": True}))
    by_source = {e.source: e for e in examples}
    convo = by_source["conversation"]
    assert [m["role"] for m in convo.messages] == ["system", "user", "assistant", "user"]
    assert convo.messages[0]["content"] == settings.resolved_system_prompt
    assert convo.messages[1]["content"] == "Hi, I'm [EMAIL]"  # earlier turns are scrubbed too
    assert convo.messages[-1]["content"] == "Can I return boots?"  # the cleaned question replaces the typo
    assert convo.completion == "Yes, within 30 days." and convo.key_facts == ["30 days"]
    assert [m["role"] for m in by_source["knowledge"].messages] == ["system", "user"]
    assert len(examples) == 2 and "thumbs_up" in {e.source for e in with_likes}
    legacy = prompt_completion_record(convo, settings)
    assert legacy["prompt"].endswith("Customer: Can I return boots?\n\n###\n\n")
    assert legacy["completion"] == " Yes, within 30 days. END"
    # A tiny budget trims the oldest turns but keeps the system prompt and the question.
    small = settings.model_copy(update={"context_budget": 128})
    with Session(engine) as session:
        conv_id = next(c for c in corrections.approved_corrections(session) if c.message_id).message_id
        session.get(Message, msgs[0].id).content = "x" * 600
        session.commit()
        trimmed = next(e for e in training_examples(session, small) if e.source == "conversation")
    assert [m["role"] for m in trimmed.messages] == ["system", "user"] and conv_id


def test_trimming_with_a_real_tokenizer(env, tiny_model_dir):
    from transformers import AutoTokenizer

    from feedback.export import trim_context

    settings, _ = env
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "word " * 200},
                {"role": "assistant", "content": "ok"}, {"role": "user", "content": "Refund?"}]
    assert trim_context(messages, "Yes.", settings.model_copy(update={"context_budget": 2048}), tokenizer) == messages
    short = trim_context(messages, "Yes.", settings.model_copy(update={"context_budget": 128}), tokenizer)
    assert short == [messages[0], messages[3]]


def test_snapshot_split_by_lineage_is_deterministic_and_immutable(env):
    settings, engine = env
    with db.session_scope(engine) as session:
        few = [approve_qa(session, settings, f"Question {i}?", f"Answer {i}.") for i in range(3)]
    with db.session_scope(engine) as session:
        small = datasets.create_snapshot(session, settings, "alice")
    assert (small.n_train, small.n_valid) == (3, 0)  # < 5 examples: all in train
    with db.session_scope(engine) as session:
        for i in range(3, 20):
            approve_qa(session, settings, f"Question {i}?", f"Answer {i}.")
        revised = corrections.update_correction(session, settings, few[0].id, actor="bob", answer="Answer 0, revised.")
        corrections.submit_correction(session, revised.id, actor="bob")
        corrections.approve_correction(session, settings, revised.id, actor="alice")
    with db.session_scope(engine) as session:
        snap = datasets.create_snapshot(session, settings, "alice")
        again = datasets.create_snapshot(session, settings, "bob")
    assert again.id == snap.id and snap.id == f"snap_{snap.content_hash[:12]}"
    assert snap.parent_id == small.id and snap.n_train + snap.n_valid == 20 and 1 <= snap.n_valid <= 8
    folder = datasets.snapshot_dir(settings, snap)
    assert sorted(p.name for p in folder.iterdir()) == [
        "manifest.json", "preferences.jsonl", "train.jsonl", "train.prompt_completion.jsonl", "valid.jsonl",
        "valid.prompt_completion.jsonl"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["counts"]["by_source"] == {"knowledge": 20} and manifest["parent_id"] == small.id
    train, valid = datasets.load_examples(settings, snap, "train"), datasets.load_examples(settings, snap, "valid")
    train_lineages = {e.lineage_id for e in train}
    assert train_lineages.isdisjoint(e.lineage_id for e in valid)
    assert "Answer 0, revised." in [e.completion for e in train + valid]
    lines = datasets.load_records(settings, snap, "train")  # as written: OpenAI chat lines ending with the answer
    assert [TrainingExample.from_record(line) for line in lines] == train
    assert all(line["messages"][-1]["role"] == "assistant" and "tuneloop" in line for line in lines)
    legacy = datasets.load_records(settings, snap, "train", format="prompt_completion")
    assert len(legacy) == snap.n_train and legacy[0]["completion"].endswith(" END")
    # The same data splits the same way in a fresh database (seeded, not random).
    examples = [TrainingExample([], "", lineage_id=f"corr_{i}", id=str(i)) for i in range(50)]
    a, b = datasets.split_examples(examples, 0.2), datasets.split_examples(list(reversed(examples)), 0.2)
    assert {e.id for e in a[1]} == {e.id for e in b[1]} and 3 <= len(a[1]) <= 18
    with Session(engine) as session:
        assert [s.id for s in datasets.list_snapshots(session)] == [snap.id, small.id]
        with pytest.raises(LookupError):
            datasets.get_snapshot(session, "snap_missing")
    assert not [p for p in settings.datasets_dir.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_a_snapshot_holds_its_preference_pairs_so_dpo_is_reproduced_after_the_tables_change(env):
    """The pairs a DPO round trains on come from its snapshot (``preferences.jsonl``), not from the live
    tables: the logged answer edited or purged later does not change what the round sees."""
    from feedback.preferences import preference_records
    from retrain.jobs.rounds import snapshot_preferences

    settings, engine = env
    with db.session_scope(engine) as session:
        conv = Conversation()
        session.add(conv)
        msgs = [Message(conversation_id=conv.id, position=0, role="user", content="Refund window?"),
                Message(conversation_id=conv.id, position=1, role="assistant", content="Seven days.")]
        session.add_all(msgs)
        session.flush()
        approve_qa(session, settings, "How long is the refund window?", "45 days from delivery.", message_id=msgs[1].id)
        approve_qa(session, settings, "Do you ship to Norway?", "Yes.")  # knowledge: no rejected answer
        snapshot = datasets.create_snapshot(session, settings, "test")
        frozen = snapshot_preferences(session, settings, snapshot.id)
        session.get(Message, msgs[1].id).content = "Thirty days."  # the live tables move on
        session.flush()
        assert preference_records(session, settings)[0]["non_preferred_output"][0]["content"] == "Thirty days."
        assert snapshot_preferences(session, settings, snapshot.id) == frozen
    [pair] = frozen
    assert (pair["preferred_output"][0]["content"], pair["non_preferred_output"][0]["content"]) == (
        "45 days from delivery.", "Seven days.")
    assert pair["input"]["messages"][-1] == {"role": "user", "content": "How long is the refund window?"}
    assert datasets.read_manifest(settings, snapshot)["preferences"] == 1
    (datasets.snapshot_dir(settings, snapshot) / datasets.PREFERENCES_FILE).unlink()  # a snapshot from before
    with Session(engine) as session:
        assert snapshot_preferences(session, settings, snapshot.id)[0]["non_preferred_output"][0]["content"] == (
            "Thirty days.")
