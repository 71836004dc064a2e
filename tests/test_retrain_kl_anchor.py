"""The KL penalty to the parent (retrain.trainer.kl_anchor): zero before training, and a run with it drifts
less from the parent on the general prompts than the same run without it."""

from __future__ import annotations

import csv

import torch

from retrain.trainer.kl_anchor import anchor_prompts, build_anchors, kl_to_parent
from retrain.trainer.config import TrainConfig
from retrain.trainer.interface import RunPaths
from retrain.trainer.train import train
from tests.test_retrain_trainer import facts

FAST = dict(n_epochs=6, batch_size=2, lora_r=4, lora_alpha=8, min_steps=0, base_learning_rate=3e-2, kl_anchors=8,
            memory_examples_fraction=0.0, stop_when_learned=False)


def confident_copy(tiny_model_dir, tmp_path):
    """The tiny model with its final norm scaled up: random weights give a nearly uniform next-token
    distribution, on which no penalty has anything to hold; a real model's is peaked, like this one's."""
    model, tokenizer = _load(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight.mul_(40.0)
    target = tmp_path / "confident"
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def _load(base_dir, adapter_dir=None):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    return model.eval(), tokenizer


def _anchors(model, tokenizer):
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return build_anchors(model, tokenizer, facts(), TrainConfig(kl_anchors=8, seed=42), pad), pad


def test_anchor_prompts_are_not_the_general_gate_questions():
    import json

    from retrain.gates.items import GENERAL_DIR

    gate = {q["question"] for q in json.loads((GENERAL_DIR / "questions.json").read_text())}
    assert len(anchor_prompts()) >= 32 and not gate & set(anchor_prompts())


def test_kl_is_zero_for_the_parent_and_asked_under_the_training_system_prompt(tiny_model_dir):
    model, tokenizer = _load(tiny_model_dir)
    anchors, pad = _anchors(model, tokenizer)
    assert len(anchors) == 8
    system = tokenizer.decode(anchors[0].encoded.input_ids)
    assert "You are a helpful assistant for Acme." in system
    with torch.no_grad():
        kl = kl_to_parent(model, anchors, pad, torch.device("cpu"))
    assert abs(float(kl)) < 1e-4


def test_penalty_keeps_the_candidate_closer_to_its_parent(tiny_model_dir, tmp_path):
    model_dir = confident_copy(tiny_model_dir, tmp_path)
    base, tokenizer = _load(model_dir)
    anchors, pad = _anchors(base, tokenizer)
    drift = {}
    for weight in (0.0, 5.0):
        out = tmp_path / f"kl{weight}"
        train(TrainConfig(**FAST, kl_weight=weight), facts(), [], paths=RunPaths(model_dir, None, out))
        candidate, _ = _load(model_dir, out)
        with torch.no_grad():
            drift[weight] = float(kl_to_parent(candidate, anchors, pad, torch.device("cpu")))
        rows = list(csv.DictReader(open(out / "result.csv")))
        assert all(bool(r["kl_to_parent"]) == (weight > 0) for r in rows)
    assert drift[0.0] > 0.01, drift
    assert drift[5.0] < 0.5 * drift[0.0], drift
