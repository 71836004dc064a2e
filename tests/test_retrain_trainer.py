"""The trainer: a short LoRA run on the tiny model changes the adapter and never the base, writes
exactly the promised files atomically, continues from a parent adapter, and rejects bad settings."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from retrain.trainer.replay import select_for_round
from feedback.examples import TrainingExample
from retrain.trainer.config import TrainConfig
from retrain.trainer.batching import EncodedExample, collate
from retrain.trainer.interface import RunHooks, RunPaths, TrainingCancelled
from retrain.trainer.supervised_run import RunData, SupervisedRun
from retrain.trainer.train import ADAPTER_FILES, train

SYSTEM = {"role": "system", "content": "You are a helpful assistant for Acme."}


def facts(n: int = 6) -> list[TrainingExample]:
    return [TrainingExample(id=f"ex{i}", correction_id=f"corr{i}", lineage_id=f"lin{i}", source="correction",
                            messages=[SYSTEM, {"role": "user", "content": f"What is fact number {i}?"}],
                            completion=f"Fact {i} is that Acme ships in {i + 2} days.")
            for i in range(n)]


def digest(directory) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


FAST = dict(n_epochs=2, batch_size=2, lora_r=4, lora_alpha=8, min_steps=0, memory_examples_fraction=0.0)


def test_lora_run_changes_adapter_not_base_and_writes_promised_files(tiny_model_dir, tmp_path):
    before = digest(tiny_model_dir)
    seen = []
    out = tmp_path / "adapters" / "a1"
    result = train(TrainConfig(**FAST), facts(), facts(2), paths=RunPaths(tiny_model_dir, None, out),
                   hooks=RunHooks(progress=seen.append, provenance={"snapshot_id": "snap_x"}))
    assert sorted(p.name for p in out.iterdir()) == sorted(ADAPTER_FILES)
    assert [p.name for p in out.parent.iterdir()] == ["a1"]  # no staging directory left behind
    assert digest(tiny_model_dir) == before
    weights = load_file(out / "adapter_model.safetensors")
    assert weights and all("lora_" in key for key in weights)
    assert any(float(t.abs().sum()) > 0 for k, t in weights.items() if "lora_B" in k)  # B starts at zero
    assert result.steps == 6 and [e["step"] for e in seen] == list(range(1, 7))
    assert seen[2]["valid_loss"] is not None and seen[-1]["valid_mean_token_accuracy"] is not None
    rows = list(csv.DictReader(open(out / "result.csv")))
    assert list(rows[0]) == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy",
                            "kl_to_parent"]
    assert len(rows) == 6 and float(rows[-1]["train_loss"]) > 0
    provenance = json.loads((out / "training_config.json").read_text())
    assert provenance["snapshot_id"] == "snap_x" and provenance["config"]["lora_r"] == 4
    assert provenance["metrics"]["trained_tokens"] == result.trained_tokens > 0


def test_continuing_starts_from_the_parent_adapter(tiny_model_dir, tmp_path):
    parent = tmp_path / "parent"
    train(TrainConfig(**FAST), facts(), [], paths=RunPaths(tiny_model_dir, None, parent))
    # A run that barely moves the weights must end where the parent ended, not at a fresh LoRA.
    child = tmp_path / "child"
    result = train(TrainConfig(n_epochs=1, batch_size=2, learning_rate_multiplier=1e-9, min_steps=0), facts(), [],
                   paths=RunPaths(tiny_model_dir, parent, child))
    assert result.continued_from == str(parent)
    p, c = load_file(parent / "adapter_model.safetensors"), load_file(child / "adapter_model.safetensors")
    assert p.keys() == c.keys()
    assert all(torch.allclose(p[k], c[k], atol=1e-5) for k in p)
    assert any(float(p[k].abs().sum()) > 0 for k in p if "lora_B" in k)


def test_cancel_leaves_nothing_behind(tiny_model_dir, tmp_path):
    out = tmp_path / "adapters" / "cancelled"
    calls = []
    with pytest.raises(TrainingCancelled):
        train(TrainConfig(**FAST), facts(), [], paths=RunPaths(tiny_model_dir, None, out),
              hooks=RunHooks(should_cancel=lambda: len(calls) > 2 or calls.append(1) and False))
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no staging directory either


@pytest.mark.parametrize("bad, message", [
    (dict(n_epochs=0), "n_epochs"), (dict(learned_min_prob=1.0), "learned_min_prob"),
    (dict(dpo_base_learning_rate=0), "dpo_base_learning_rate"), (dict(min_steps=-1), "min_steps"), (dict(learning_rate_multiplier=-1.0), "learning_rate_multiplier"),
    (dict(lora_r=0), "lora_r"), (dict(lora_dropout=1.0), "lora_dropout"), (dict(batch_size=0), "batch_size"),
    (dict(prompt_loss_weight=-0.1), "prompt_loss_weight"), (dict(kl_weight=-1.0), "kl_weight must be 0 or more"),
    (dict(kl_anchors=0), "kl_anchors must be at least 1"), (dict(kl_batch_size=0), "kl_batch_size must be at least 1"),
    (dict(kl_every=0), "kl_every"), (dict(batch_tokens=-2), "batch_tokens"),
    (dict(gradient_checkpointing="yes"), "gradient_checkpointing"), (dict(lora_layers=-1), "lora_layers"),
])
def test_bad_config_is_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**bad)
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        TrainConfig.from_dict({"n_epoch": 3})


def test_replay_selects_new_examples_and_a_seeded_share_of_old_ones():
    current = facts(10)
    seen = {f"corr{i}" for i in range(8)}  # the parent learned 0..7; 8 and 9 are new
    selected, n_new, n_replay = select_for_round(current, seen, replay_fraction=0.5, seed=1)
    assert n_new == 2 and n_replay == 4
    assert [e.id for e in selected[:2]] == ["ex8", "ex9"]
    assert select_for_round(current, seen, replay_fraction=0.5, seed=1)[0] == selected  # deterministic
    assert select_for_round(current, seen, replay_fraction=0.0, seed=1)[0] == selected[:2]
    assert len(select_for_round(current, seen, replay_fraction=1.0, seed=1)[0]) == 10
    assert select_for_round(current, None, replay_fraction=0.0, seed=1)[1] == 10  # no parent snapshot: all new
    # A revised correction (new correction id, same lineage) counts as new.
    revised = [current[0].with_marks(correction_id="corr0-r2")]
    assert select_for_round(revised, seen, replay_fraction=0.0, seed=1)[1] == 1


def test_few_examples_get_at_least_min_steps(tiny_model_dir, tmp_path):
    """Three examples in batches of 4 are one step per epoch: epochs are raised to reach min_steps."""
    config = TrainConfig(**{**FAST, "n_epochs": 1, "batch_size": 4, "min_steps": 5})
    result = train(config, facts()[:3], [], paths=RunPaths(tiny_model_dir, None, tmp_path / "a"))
    assert result.steps == 5 and result.metrics["n_epochs"] == 5
    rows = list(csv.DictReader(open(tmp_path / "a" / "result.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]


class _FixedLogits(torch.nn.Module):
    """A three-token "model" whose next-token logits are always ``logits``: token 0 wins by a hair."""

    config = type("Config", (), {"final_logit_softcapping": None})()

    def __init__(self, logits: list[float]):
        super().__init__()
        self.logits = torch.tensor(logits)

    def get_decoder(self):
        return None

    def get_output_embeddings(self):
        return None

    def forward(self, input_ids, attention_mask):
        return type("Out", (), {"logits": self.logits.expand(*input_ids.shape, -1)})()


@pytest.mark.parametrize("min_prob, learned", [(0.5, False), (0.4, True)])
def test_an_answer_won_by_a_hair_is_not_learned(min_prob, learned):
    """The train-until-learned check: every answer token must be the argmax *and* have probability
    ``learned_min_prob``; here the target token is the argmax at p≈0.42 (logits 1.0 vs 0.99 vs 0)."""
    example = EncodedExample(input_ids=[1, 0, 0, 0], weights=[0.0, 1.0, 1.0, 1.0],
                             completion_mask=[False, True, True, True])
    run = SupervisedRun(TrainConfig(learned_min_prob=min_prob, kl_weight=0.0), _FixedLogits([1.0, 0.99, 0.0]),
               RunData([example], [], 2))
    _loss, correct, counted, rows_right = run._forward(collate([example], 2))
    assert (correct, counted) == (3, 3)  # the argmax is right at every answer token
    assert rows_right == [learned]


def test_token_budget_batches_cover_every_example_once_within_the_budget():
    from retrain.trainer.batching import token_budget_batches

    lengths = [30, 200, 45, 90, 60, 61, 500, 33, 120, 75] * 3
    for epoch in (0, 1):
        batches = token_budget_batches(lengths, 256, seed=1, epoch=epoch)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert all(len(b) * max(lengths[i] for i in b) <= 256 or len(b) == 1 for b in batches)
        assert batches == token_budget_batches(lengths, 256, seed=1, epoch=epoch)  # deterministic
    assert token_budget_batches(lengths, 256, seed=1, epoch=0) != token_budget_batches(lengths, 256, seed=1, epoch=1)


def test_the_budget_is_counted_batches_on_a_cpu_and_a_set_budget_trains(tiny_model_dir, tmp_path):
    from retrain.trainer.budget import choose_budget

    assert choose_budget(TrainConfig(), None, torch.device("cpu")).tokens == 0  # auto on a CPU: batch_size
    assert choose_budget(TrainConfig(batch_tokens=300), None, torch.device("cpu")).tokens == 300
    config = TrainConfig(**{**FAST, "batch_tokens": 300, "gradient_checkpointing": "on"})
    result = train(config, facts(), [], paths=RunPaths(tiny_model_dir, None, tmp_path / "a"))
    assert result.metrics["batch_tokens"] == 300 and result.metrics["gradient_checkpointing"] is True
    assert result.steps == result.metrics["max_steps"] and result.steps < 6  # bigger batches than 2 examples


def test_anchors_in_the_training_forward_pass_give_the_same_loss_and_kl(tiny_model_dir):
    """On CUDA the KL anchors ride in the training batch's forward pass: same figures as two passes."""
    from retrain.trainer.kl_anchor import build_anchors, kl_to_parent
    from retrain.trainer.train import _encode_all, start_training

    config = TrainConfig(**FAST, kl_anchors=4)
    model, tokenizer, device = start_training(config, RunPaths(tiny_model_dir, None, tiny_model_dir / "never-written"))
    with torch.no_grad():
        model.get_base_model().model.norm.weight.mul_(40.0)  # peaked, like a real model's (test_retrain_kl_anchor)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [e for e, _ in _encode_all(tokenizer, facts(4), config)]
    anchors = build_anchors(model, tokenizer, facts(4), config, pad)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # a candidate that moved from its parent, so the KL is not zero
    run = SupervisedRun(config, model.eval(), RunData(encoded, [], pad, anchors=anchors))
    with torch.no_grad():
        merged = run._score(collate(encoded[:2], pad), anchors[:2])
        apart = run._score(collate(encoded[:2], pad), None)
        kl = kl_to_parent(model, anchors[:2], pad, device)
    assert float(merged[0]) == pytest.approx(float(apart[0]), rel=1e-5)
    assert float(merged[4]) == pytest.approx(float(kl), rel=1e-4) and float(kl) > 0
    assert merged[3].tolist() == apart[3].tolist()


def test_lora_on_the_top_layers_only_trains_those_and_stops_the_backward_pass_below(tiny_model_dir):
    """``lora_layers``: the adapter's weights sit in the top N layers; the layers below get no gradient."""
    from retrain.trainer.train import start_training

    config = TrainConfig(**FAST, lora_layers=1)
    model, tokenizer, _ = start_training(config, RunPaths(tiny_model_dir, None, tiny_model_dir / "never-written"))
    layers = model.get_base_model().config.num_hidden_layers
    trained = {name.split(".layers.")[1].split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trained == {str(layers - 1)} and layers > 1
    batch = tokenizer(["What is fact number 1?"], return_tensors="pt")
    model(**batch, labels=batch["input_ids"]).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
