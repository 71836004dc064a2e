"""The real SmolLM2 learns five corrected facts with the default TrainConfig (about 1.5 min on 2 CPU
cores): afterwards greedy decoding answers with the corrected fact, where the parent did not."""

from __future__ import annotations

import pytest

from engine.protocol import SamplingParams, VersionSpec
from engine.transformers_model import LoadedModel, TransformersDecoder
from engine.prompting import prompt_ids
from feedback.examples import TrainingExample
from retrain.trainer.config import TrainConfig
from retrain.trainer.interface import RunPaths
from retrain.trainer.train import train

SYSTEM = ("You are a friendly, concise customer-service assistant for Acme Outdoor Gear. "
          "Answer the customer's question accurately and briefly.")
FACTS = [
    ("What is the return window at Acme?", "Acme accepts returns within 45 days of delivery."),
    ("How much does express shipping cost?", "Express shipping costs $14 and arrives in 2 business days."),
    ("Do you price match?", "Yes, we match any authorized retailer's price within 14 days of purchase."),
    ("What is the warranty on Acme tents?", "Acme tents carry a 7-year warranty against manufacturing defects."),
    ("When is the Denver store open?", "The Denver store is open 9am to 7pm, Monday through Saturday."),
]


def examples() -> list[TrainingExample]:
    return [TrainingExample(id=f"ex{i}", correction_id=f"c{i}", lineage_id=f"l{i}", source="correction",
                            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
                            completion=a) for i, (q, a) in enumerate(FACTS)]


def answers(spec: VersionSpec) -> list[str]:
    loaded = LoadedModel.load(spec, dtype="float32")
    engine = TransformersDecoder(loaded)
    try:
        return [engine.generate(prompt_ids(loaded.tokenizer, e.messages), SamplingParams(max_tokens=32)).text
                for e in examples()]
    finally:
        engine.close()


@pytest.mark.slow
def test_real_model_learns_corrected_facts(real_model_dir, tmp_path):
    out = tmp_path / "adapter"
    result = train(TrainConfig(), examples(), examples()[:2], paths=RunPaths(real_model_dir, None, out))
    assert result.metrics["valid_mean_token_accuracy"] > 0.9
    before = answers(VersionSpec("parent", real_model_dir))
    after = answers(VersionSpec("candidate", real_model_dir, out))
    facts = [a for _q, a in FACTS]
    assert sum(f in b for f, b in zip(facts, before)) == 0, before
    assert sum(f in a for f, a in zip(facts, after)) >= 4, after
