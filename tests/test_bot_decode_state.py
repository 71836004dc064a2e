"""A batch whose rows all finish on the same step is a normal end of decoding, not an error."""

from __future__ import annotations

import logging


def test_rows_finishing_together_log_no_error(tiny_model_dir, caplog):
    from engine.protocol import SamplingParams, VersionSpec
    from engine.transformers_model import LoadedModel, TransformersDecoder
    from engine.prompting import prompt_ids, with_system_prompt

    loaded = LoadedModel.load(VersionSpec("v0", tiny_model_dir), dtype="float32")
    engine = TransformersDecoder(loaded, max_batch_size=4)
    caplog.set_level(logging.DEBUG, logger="engine.transformers_model")
    try:
        prompt = prompt_ids(loaded.tokenizer, with_system_prompt("Be brief.", [{"role": "user", "content": "hi"}]))
        params = SamplingParams(max_tokens=4)
        # Identical greedy prompts with the same max_tokens: every row finishes on the same step.
        batched = engine.generate_many([prompt] * 3, params)
        single = engine.generate(prompt, params)  # one row finishing is the same case
        assert len({c.text for c in batched + [single]}) == 1
        assert all(c.finish_reason in ("length", "stop") for c in batched)
    finally:
        engine.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
