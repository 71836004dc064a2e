"""What a round trains on (retrain.trainer.augment) and when it stops: each accepted phrasing is an example,
one is held out for the generalises gate, memory-context examples are laid out token for token as
serving lays them out, and train-until-learned stops early on the tiny model and says at which step."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from engine.protocol import VersionSpec
from engine.transformers_model import LoadedModel
from bot.runtime import ServingRuntime
from feedback.examples import TrainingExample
from feedback.memory.service import MemoryHit, memory_context
from retrain.trainer.augment import (add_memory_context, expand_phrasings, held_out_by_correction, split_phrasings, training_set)
from retrain.trainer.batching import encode_example
from retrain.trainer.config import TrainConfig
from retrain.trainer.learned import LearnedCheck
from retrain.trainer.interface import RunHooks, RunPaths
from retrain.trainer.train import train

SYSTEM = {"role": "system", "content": "You are a friendly, concise customer-service assistant for Acme Outdoor Gear. "
          "Answer the customer's question accurately and briefly."}
QUESTIONS = ["How long do I have to return an item?", "What does express shipping cost?", "Do you price match?"]
ANSWERS = ["You can return items within 45 days.", "Express shipping costs $14.", "Yes, within 14 days."]
PHRASINGS = [["What's the return window?", "Can I still send it back after a month?", "Return deadline?"],
             ["Price of express delivery?"], []]


def snapshot_lines() -> list[dict]:
    """Snapshot lines as a dataset snapshot writes them, carrying their accepted phrasings."""
    return [TrainingExample(id=f"ex_c{i}", correction_id=f"c{i}", lineage_id=f"l{i}", source="correction",
                            alternative_questions=PHRASINGS[i], messages=[SYSTEM, {"role": "user", "content": q}],
                            completion=a).chat_record()
            for i, (q, a) in enumerate(zip(QUESTIONS, ANSWERS))]


def corrections() -> list[TrainingExample]:
    """The examples a round reads back from those lines."""
    return [TrainingExample.from_record(line) for line in snapshot_lines()]


def test_each_trained_phrasing_is_an_example_and_one_is_held_out():
    lines = snapshot_lines()
    assert lines[0]["tuneloop"]["alternative_questions"] == PHRASINGS[0]
    assert "alternative_questions" not in lines[2]["tuneloop"]  # none: the snapshot line (and hash) is unchanged
    records = corrections()
    assert records[0].alternative_questions == PHRASINGS[0] and records[0].messages[-1]["content"] == QUESTIONS[0]
    expanded = expand_phrasings(records)
    by_correction = {cid: [e for e in expanded if e.correction_id == cid] for cid in ("c0", "c1", "c2")}
    held = held_out_by_correction(records)
    assert set(held) == {"c0"} and held["c0"] in PHRASINGS[0]  # only c0 has two or more phrasings
    asked = [e.messages[-1]["content"] for e in by_correction["c0"]]
    assert asked[0] == QUESTIONS[0] and sorted(asked[1:]) == sorted(set(PHRASINGS[0]) - {held["c0"]})
    assert held["c0"] not in asked  # never trained on
    assert [e.messages[-1]["content"] for e in by_correction["c1"]] == [QUESTIONS[1], PHRASINGS[1][0]]
    assert len(by_correction["c2"]) == 1
    assert all(e.completion == ANSWERS[int(e.correction_id[1])] for e in expanded)
    assert all(e.messages[0] == SYSTEM for e in expanded)
    assert len(expand_phrasings(records, enabled=False)) == 3
    # Tolerant of examples without the field (older snapshots, uploaded files): one example each.
    assert len(expand_phrasings([TrainingExample([SYSTEM, {"role": "user", "content": "Hi?"}], "Hello.")])) == 1


def test_held_out_choice_is_stable_and_ignores_blanks_and_repeats():
    alternatives = ["Return deadline?", "  ", "How long do I have to return an item?", "return deadline?", "Refund window?"]
    trained, held = split_phrasings("c0", QUESTIONS[0], alternatives)
    assert sorted([*trained, held]) == ["Refund window?", "Return deadline?"]
    reordered = split_phrasings("c0", QUESTIONS[0], list(reversed(alternatives)))[1]
    assert reordered.lower() == held.lower()  # order does not matter (of two repeats, the first one's spelling)
    assert split_phrasings("c0", QUESTIONS[0], ["Only one?"]) == (["Only one?"], None)


def test_memory_context_examples_are_laid_out_exactly_as_serving_lays_them_out(tiny_model_dir, make_settings):
    settings = make_settings(base_model=str(tiny_model_dir), system_prompt=SYSTEM["content"])
    expanded = expand_phrasings(corrections())
    alone = add_memory_context(expanded, fraction=1.0, max_distractors=0, seed=3)
    copies = [e for e in alone if e.memory_context]
    assert len(alone) == 2 * len(expanded) and len(copies) == len(expanded)
    runtime = ServingRuntime(settings, db=None)  # only its prompt layout is used, nothing is started
    loaded = LoadedModel.load(VersionSpec("v0", tiny_model_dir), dtype="float32")
    for example in copies:
        cid = example.correction_id
        k = int(cid[1])
        # What serving would send for this user turn when memory finds this correction.
        served = runtime.engine.encode(loaded, runtime.with_system(
            example.messages[1:], memory_context([MemoryHit(cid, QUESTIONS[k], ANSWERS[k], 0.9)])), 64)
        encoded = encode_example(loaded.tokenizer, example, max_seq_len=1024, prompt_loss_weight=0.0)
        prompt = [t for t, answer in zip(encoded.input_ids, encoded.completion_mask) if not answer]
        assert prompt == served

    # With distractors: the right verified answer is always there, among 0-2 other approved answers.
    mixed = [e for e in add_memory_context(expanded, fraction=0.5, max_distractors=2, seed=3)
             if e.memory_context]
    assert len(mixed) == round(0.5 * len(expanded))
    for example in mixed:
        k = int(example.correction_id[1])
        system = example.messages[0]["content"]
        shown = [j for j in range(3) if f"Q: {QUESTIONS[j]}\nA: {ANSWERS[j]}" in system]
        assert k in shown
        orders = [[MemoryHit(f"c{j}", QUESTIONS[j], ANSWERS[j], 1.0) for j in order]
                  for order in itertools.permutations(shown)]
        assert system in {runtime.with_system([], memory_context(hits))[0]["content"] for hits in orders}
    assert any(len([j for j in range(3) if QUESTIONS[j] in e.messages[0]["content"]]) > 1 for e in mixed)


def test_training_set_without_phrasings_or_memory_is_one_example_per_correction():
    assert len(training_set(corrections(), phrasings=False, memory_fraction=0.0, max_distractors=2, seed=1)) == 3
    everything = training_set(corrections(), phrasings=True, memory_fraction=0.5, max_distractors=2, seed=1)
    assert len(everything) == 6 + 3  # c0: question + 2 trained phrasings, c1: 2, c2: 1; plus half of them with memory
    # Only corrections are in memory at serving time: an uploaded training file gets no memory copies.
    uploaded = [TrainingExample.from_record({"messages": [SYSTEM, {"role": "user", "content": f"Hi {i}?"},
                                                          {"role": "assistant", "content": "Hello."}]})
                for i in range(4)]
    assert len(training_set(uploaded, phrasings=True, memory_fraction=0.5, max_distractors=2, seed=1)) == 4


def _all_answer_tokens_right(base_dir, adapter_dir, examples) -> bool:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter_dir)
    model.eval()
    with torch.no_grad():
        for example in examples:
            encoded = encode_example(tokenizer, example, max_seq_len=1024, prompt_loss_weight=0.0)
            ids = torch.tensor([encoded.input_ids])
            predicted = model(input_ids=ids).logits[0, :-1].argmax(-1)
            answer = torch.tensor(encoded.completion_mask[1:])
            if not bool((predicted[answer] == ids[0, 1:][answer]).all()):
                return False
    return True


CAP = dict(n_epochs=30, batch_size=2, min_steps=0, warmup_fraction=0.0, kl_weight=0.0, memory_examples_fraction=0.0)


def test_the_stop_waits_for_two_right_passes_in_a_row_of_every_new_example():
    """The stop rule's bookkeeping alone (no model): per example, right passes in a row since its last
    wrong one; the share counts the round's new examples only."""
    check = LearnedCheck([True, True, False], checks=2, device=torch.device("cpu"))
    check.update([0, 1, 2], torch.tensor([True, True, False]))
    check.update([0], torch.tensor([True]))
    assert check.state() == [2, 1, 0] and float(check.share()) == 0.5  # the second has one right pass
    check.update([1, 2], torch.tensor([False, True]))
    assert check.state() == [2, 0, 1] and float(check.share()) == 0.5  # a wrong pass starts its count again
    check.update([1], torch.tensor([True]))
    check.update([1], torch.tensor([True]))
    assert float(check.share()) == 1.0  # the replayed third (one right pass) is never waited for
    assert float(LearnedCheck([False], checks=2, device=torch.device("cpu")).share()) == 1.0  # nothing new


@pytest.mark.slow
def test_train_until_learned_stops_early_and_reports_the_step(real_model_dir, tmp_path):
    """Learning is the point here, so the real SmolLM2 (the tiny random model barely moves in 200 steps)."""
    examples = [TrainingExample(id=f"e{i}", correction_id=f"c{i}", lineage_id=f"l{i}", source="correction",
                                messages=[SYSTEM, {"role": "user", "content": q}], completion=a)
                for i, (q, a) in enumerate(zip(QUESTIONS[:2], ["Forty-five days.", "Fourteen dollars."]))]
    seen = []
    out = tmp_path / "learned"
    result = train(TrainConfig(**CAP), examples, [], paths=RunPaths(real_model_dir, None, out),
                   hooks=RunHooks(progress=seen.append))
    metrics = result.metrics
    assert metrics["stop_reason"] == "learned" and metrics["learned_at_step"] == metrics["stopped_at_step"] == result.steps
    assert result.steps < metrics["max_steps"] == 30
    shares = [row for row in seen if "learned_share" in row]  # end of each epoch, and the step it was learned
    assert shares[-1]["learned_share"] == 1.0 and shares[-1]["step"] == result.steps
    assert all(row["learned_share"] < 1.0 for row in shares[:-1])  # it stopped at the first all-learned step
    assert metrics["n_epochs"] >= 2  # two right passes in a row each, one pass an epoch
    assert _all_answer_tokens_right(real_model_dir, out, examples)  # what the check promised holds for the adapter


@pytest.mark.slow
def test_replayed_examples_do_not_hold_up_the_stop(real_model_dir, tmp_path):
    """Only the round's new examples must be learned: a long replayed answer not yet learned does not
    keep the run going."""
    new = TrainingExample(id="e0", correction_id="c0", messages=[SYSTEM, {"role": "user", "content": QUESTIONS[0]}],
                          completion="Forty-five days.")
    words = "tent stove lantern rope compass kettle parka boots socks gloves map torch".split()
    old = TrainingExample(id="e1", correction_id="c1", messages=[SYSTEM, {"role": "user", "content": "List our gear."}],
                          completion=" ".join(random.Random(0).choices(words, k=80)))  # no pattern to learn fast
    out = tmp_path / "a"
    result = train(TrainConfig(**CAP), [new, old], [], paths=RunPaths(real_model_dir, None, out), new_keys={"c0"})
    assert result.metrics["stop_reason"] == "learned" and result.steps < 30
    assert _all_answer_tokens_right(real_model_dir, out, [new])
    assert not _all_answer_tokens_right(real_model_dir, out, [old])
