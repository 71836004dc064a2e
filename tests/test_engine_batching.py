"""The transformers engine's batched decoder: several chats decoded together give exactly the text
each gives alone, and a chat that arrives during a long one joins the running batch."""

def test_engine_batches_match_single_requests(tiny_model_dir):
    from engine.protocol import SamplingParams, VersionSpec
    from engine.transformers_model import LoadedModel, TransformersDecoder
    from engine.prompting import prompt_ids, with_system_prompt

    loaded = LoadedModel.load(VersionSpec("v0", tiny_model_dir), dtype="float32")
    engine = TransformersDecoder(loaded, max_batch_size=4)
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


def test_engine_lets_chats_join_a_running_batch(tiny_model_dir):
    """Continuous batching: a chat that arrives while another is decoding joins it between steps,
    finishes before the long one does, and answers exactly as it would alone (left padding and
    explicit positions keep rows independent), with prompts shorter and longer than the running one."""
    import threading

    from engine.protocol import Completion, SamplingParams, VersionSpec
    from engine.transformers_model import LoadedModel, TransformersDecoder
    from engine.prompting import prompt_ids, with_system_prompt

    loaded = LoadedModel.load(VersionSpec("v0", tiny_model_dir), dtype="float32")
    engine = TransformersDecoder(loaded, max_batch_size=4)
    try:
        def ids(q: str) -> list[int]:
            return prompt_ids(loaded.tokenizer, with_system_prompt("Be brief.", [{"role": "user", "content": q}]))

        long_prompt = ids("tell me everything about your return policy")
        joiners = [ids("hi"), ids("what are your opening hours on a long weekend in the summer, and on holidays?")]
        # the tiny model repeats itself: the repetition guard is off, so lengths are what is tested
        long_params = SamplingParams(max_tokens=200, repetition_ngram=0)
        short_params = SamplingParams(max_tokens=6, repetition_ngram=0)
        alone_long = engine.generate(long_prompt, long_params)
        alone_short = [engine.generate(p, short_params) for p in joiners]
        assert alone_long.completion_tokens == 200  # precondition: the long answer runs its full length

        import time

        done_at: dict[str, float] = {}
        results: dict[int, Completion] = {}
        stream = engine.stream(long_prompt, long_params)
        next(stream)  # the long chat is decoding now

        def finish_long() -> None:
            results[-1] = [item for item in stream if isinstance(item, Completion)][0]
            done_at["long"] = time.perf_counter()

        def ask(k: int) -> None:
            results[k] = engine.generate(joiners[k], short_params)
            done_at[f"short{k}"] = time.perf_counter()

        threads = [threading.Thread(target=finish_long)] + [threading.Thread(target=ask, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        long_result = results[-1]

        assert done_at["short0"] < done_at["long"] and done_at["short1"] < done_at["long"], done_at
        assert long_result.text == alone_long.text
        assert [results[k].text for k in range(len(joiners))] == [c.text for c in alone_short]
    finally:
        engine.close()
