"""The llama.cpp engine on the tiny model converted to GGUF: the same greedy answer as transformers
on the same weights, chats decoded together in one batch, an aborted stream frees its sequence, and
`tuneloop models export` writes a GGUF that bare llama-cpp-python loads, with an Ollama Modelfile.
(The shared contract — streaming, stop, max_tokens, usage, swap under a stream — is in
test_engine_contract.py.)"""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.gguf_files import ensure_gguf
from engine.llamacpp import LlamaCppEngine
from engine.transformers_engine import TransformersEngine
from engine.modelstore import ModelNotFoundError
from engine.protocol import SamplingParams, VersionSpec
from test_engine_contract import MESSAGES, V0, drain

QUESTIONS = ["Can I return boots?", "Do you ship to Canada?", "What is your phone number?", "Hello!"]


def conversation(question: str) -> list[dict[str, str]]:
    return [MESSAGES[0], {"role": "user", "content": question}]


@pytest.fixture
def llama(make_settings, tiny_model_dir):
    settings = make_settings(base_model=str(tiny_model_dir), serving_backend="llamacpp", max_batch_size=4)
    engine = LlamaCppEngine(settings, lambda version: VersionSpec(version.id, tiny_model_dir))
    engine.swap(V0)
    yield engine
    engine.close()


def test_same_greedy_answers_as_transformers_on_the_same_weights(make_settings, tiny_model_dir, tmp_path):
    """The GGUF writer keeps every weight where llama.cpp expects it (names, rotary permutation of
    q/k, tied embeddings): float32 weights give token-for-token the transformers answer."""
    settings = make_settings(base_model=str(tiny_model_dir), gguf_quantization="F32")
    base = shutil.copytree(tiny_model_dir, tmp_path / "tiny", ignore=shutil.ignore_patterns("*.gguf"))  # its own F32 GGUF
    spec_for = lambda version: VersionSpec(version.id, base)  # noqa: E731
    llama, reference = LlamaCppEngine(settings, spec_for), TransformersEngine(settings, spec_for)
    try:
        llama.swap(V0)
        reference.swap(V0)
        params = SamplingParams(max_tokens=24, repetition_ngram=0)
        for question in QUESTIONS:
            ours, theirs = (e.generate(V0, conversation(question), params) for e in (llama, reference))
            assert ours.text == theirs.text and ours.completion_tokens == theirs.completion_tokens, question
            assert ours.prompt_tokens == theirs.prompt_tokens
    finally:
        llama.close()
        reference.close()


def test_concurrent_chats_are_decoded_together(llama):
    params = SamplingParams(max_tokens=32, repetition_ngram=0)
    alone = [llama.generate(V0, conversation(q), params).text for q in QUESTIONS]
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        together = list(pool.map(lambda q: llama.generate(V0, conversation(q), params).text, QUESTIONS))
    assert together == alone
    assert llama.peak_batch >= 2  # more than one chat shared a decode step


def test_an_aborted_stream_frees_its_sequence(llama):
    current = llama.current
    stream = llama.stream(V0, MESSAGES, SamplingParams(max_tokens=400, repetition_ngram=0))
    next(stream)
    assert len(current.free_seqs) == current.n_seq - 1 and current.tokens_reserved > 0
    stream.close()  # the client went away
    deadline = time.monotonic() + 30
    while (len(current.free_seqs), current.tokens_reserved) != (current.n_seq, 0):
        assert time.monotonic() < deadline, "the aborted chat still holds its sequence"
        time.sleep(0.05)
    _, done = drain(llama.stream(V0, MESSAGES, SamplingParams(max_tokens=8, repetition_ngram=0)))  # and the engine goes on
    assert done.completion_tokens == 8


def test_a_new_chat_starts_from_the_cells_of_the_prompt_before(llama):
    """The system prompt and chat template are fed once: the next chat copies their KV cells
    (engine.prompt_cache) and gives the answer it gives from a cold cache."""
    params = SamplingParams(max_tokens=16, repetition_ngram=0)
    cold = llama.generate(V0, conversation(QUESTIONS[0]), params)  # nothing cached yet
    cache = llama.current.prompt_cache
    assert cache.tokens == llama.encode(llama.current, conversation(QUESTIONS[0]), 16)
    llama.generate(V0, conversation(QUESTIONS[1]), params)  # now holds this prompt instead
    assert cache.shared_with(llama.encode(llama.current, conversation(QUESTIONS[0]), 16)) > 10
    warm = llama.generate(V0, conversation(QUESTIONS[0]), params)
    assert (warm.text, warm.completion_tokens, warm.prompt_tokens) == (cold.text, cold.completion_tokens,
                                                                       cold.prompt_tokens)


def test_more_chats_than_sequences_wait_their_turn(llama):
    params = SamplingParams(max_tokens=8, repetition_ngram=0)
    results, errors = [], []

    def ask(question):
        try:
            results.append(llama.generate(V0, conversation(question), params))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(q,)) for q in QUESTIONS * 3]  # 12 chats, 4 sequences
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and len(results) == 12 and all(r.completion_tokens == 8 for r in results)


def test_the_gates_ask_through_the_serving_engine(make_settings, tiny_model_dir, tmp_path):
    """What is gated is what serves: with the llama.cpp engine the gates' answers come from llama.cpp
    on the version's GGUF (the same answers as transformers on float32 weights), and the report says so."""
    from engine.transformers_model import LoadedModel
    from retrain.gates.items import GateItem
    from retrain.gates.judging import evaluate

    base = shutil.copytree(tiny_model_dir, tmp_path / "tiny", ignore=shutil.ignore_patterns("*.gguf"))
    loaded = LoadedModel.load(VersionSpec("v0", base), dtype="float32")
    items = [GateItem("general", q, conversation(q), "Yes, within 30 days.", []) for q in QUESTIONS]
    reports = {}
    for backend in ("llamacpp", "transformers"):
        settings = make_settings(base_model=str(base), serving_backend=backend, gguf_quantization="F32",
                                 gate_perplexity_margin=100.0)
        reports[backend] = evaluate(settings, loaded, loaded, items, texts=[])
    assert reports["llamacpp"].summary["engine"] == "llamacpp"
    assert reports["transformers"].summary["engine"] == "transformers"
    # the report says where it decoded: this llama-cpp-python has no GPU offload, the test model is on the CPU
    assert (reports["llamacpp"].summary["device"], reports["llamacpp"].summary["gpu_layers"]) == ("cpu", 0)
    assert reports["transformers"].summary["device"] == "cpu"
    assert [r["candidate"]["answer"] for r in reports["llamacpp"].items] == \
        [r["candidate"]["answer"] for r in reports["transformers"].items]
    assert (base / "model.gguf").is_file()  # the artifact production would serve


def test_models_export_writes_a_gguf_bare_llama_cpp_loads_and_a_modelfile(cli_runner, make_settings, tiny_model_dir,
                                                                        tmp_path):
    """`tuneloop models export v0 --ollama DIR`: a standalone GGUF that bare llama-cpp-python loads and
    answers with, a Modelfile with the chat template and stop tokens; bad input is a one-line error."""
    from llama_cpp import Llama

    from tuneloop.app import prepare_database

    base = shutil.copytree(tiny_model_dir, tmp_path / "tiny", ignore=shutil.ignore_patterns("*.gguf"))
    settings = make_settings(base_model=str(base))
    prepare_database(settings).dispose()
    run = cli_runner({"DATA_DIR": settings.data_dir, "DATABASE_URL": settings.database_url, "BASE_MODEL": str(base),
                      "ADMIN_PASSWORD": "admin-password"})
    code, out, err = run("models", "export", "v0", "--ollama", str(tmp_path / "ollama"))
    assert code == 0, err
    gguf = tmp_path / "ollama" / "model.gguf"
    modelfile = (tmp_path / "ollama" / "Modelfile").read_text()
    assert f"wrote {gguf}" in out and modelfile.startswith("FROM ./model.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "<|im_start|>{{ .Role }}" in modelfile
    llm = Llama(model_path=str(gguf), n_ctx=256, verbose=False)
    assert llm.create_completion("Hello", max_tokens=4, temperature=0)["usage"]["completion_tokens"] >= 1

    code, _, err = run("models", "export", "v9", "-o", str(tmp_path / "x"))
    assert code == 2 and "v9" in err and "Traceback" not in err
    code, _, err = run("models", "export", "v0", "--format", "onnx")
    assert code == 2 and "--format gguf" in err
    code, _, err = run("models", "export", "v0", "-o", "/proc/tuneloop-export/model.gguf")
    assert code == 2 and "choose a directory you can write to" in err


def test_a_version_whose_adapter_is_gone_gets_an_error_naming_it(make_settings, tiny_model_dir, tmp_path):
    """The GGUF is written by a child process (the merge needs torch); its failure still arrives as
    the error that says what to fix, not as a child's traceback."""
    spec = VersionSpec("v9", tiny_model_dir, tmp_path / "adapters" / "v9")
    with pytest.raises(ModelNotFoundError, match="Adapter for version v9 is missing"):
        ensure_gguf(spec, make_settings(base_model=str(tiny_model_dir)))
    assert not (tmp_path / "adapters" / "v9" / "model.gguf").exists()


def test_a_q8_0_kv_cache_serves_a_chat(make_settings, real_model_dir):
    """The smaller KV cache (TUNELOOP_LLAMACPP_KV_CACHE_TYPE=q8_0, with flash attention; auto picks it here) loads
    the real SmolLM2 and answers, batched and streaming."""
    settings = make_settings(base_model=str(real_model_dir), serving_backend="llamacpp", max_batch_size=2,
                             llamacpp_kv_cache_type="q8_0")
    engine = LlamaCppEngine(settings, lambda version: VersionSpec(version.id, real_model_dir))
    try:
        engine.swap(V0)
        params = SamplingParams(max_tokens=6, temperature=0)
        answers = engine.generate_many(V0, [conversation(q) for q in QUESTIONS[:3]], params)
        assert all(a.completion_tokens >= 1 and a.version_id == "v0" for a in answers)
        deltas, done = drain(engine.stream(V0, conversation(QUESTIONS[0]), params))
        assert "".join(deltas) == done.text and done.completion_tokens >= 1
    finally:
        engine.close()


def test_a_q8_0_kv_cache_on_a_model_it_cannot_hold_names_the_setting(make_settings, tiny_model_dir):
    settings = make_settings(base_model=str(tiny_model_dir), serving_backend="llamacpp",
                             llamacpp_kv_cache_type="q8_0")
    engine = LlamaCppEngine(settings, lambda version: VersionSpec(version.id, tiny_model_dir))
    try:
        with pytest.raises(RuntimeError, match="TUNELOOP_LLAMACPP_KV_CACHE_TYPE=f16"):
            engine.swap(V0)  # the test model's attention heads are 16 wide
        assert not engine.ready
    finally:
        engine.close()


def test_an_adapter_gguf_on_the_base_answers_as_the_merged_gguf(tiny_model_dir, tmp_path):
    """The adapter GGUF (engine.gguf_lora, the alternative bench/gguf_artifact.py measures) keeps every
    LoRA weight where llama.cpp applies it (names, A/B layout, scale, rotary permutation of B): in float32
    the base GGUF plus the adapter gives token for token the merged GGUF's greedy answer, which differs
    from the base's."""
    import torch
    from llama_cpp import Llama
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.gguf_files import write_gguf
    from engine.gguf_lora import write_lora_gguf
    from retrain.trainer.config import ALL_LINEAR

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base_gguf = write_gguf(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), tokenizer,
                           tmp_path / "base.gguf", quantization="F32")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules=ALL_LINEAR, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)  # peft starts B at zero: an adapter that changes nothing proves nothing
    model.save_pretrained(tmp_path / "adapter")
    adapter_gguf = write_lora_gguf(tmp_path / "adapter", tiny_model_dir, tmp_path / "adapter.gguf", dtype="F32")
    merged_gguf = write_gguf(model.merge_and_unload(), tokenizer, tmp_path / "merged.gguf", quantization="F32")

    def greedy(**paths) -> list[list[int]]:
        llm = Llama(n_ctx=256, n_threads=1, verbose=False, **paths)
        answers = []
        for question in QUESTIONS:
            prompt = tokenizer.apply_chat_template(conversation(question), add_generation_prompt=True, tokenize=False)
            out = llm.create_completion(llm.tokenize(prompt.encode(), add_bos=False, special=True), max_tokens=12,
                                        temperature=0.0)
            answers.append(llm.tokenize(out["choices"][0]["text"].encode(), add_bos=False, special=True))
        llm.close()
        return answers

    with_adapter = greedy(model_path=str(base_gguf), lora_path=str(adapter_gguf))
    assert with_adapter == greedy(model_path=str(merged_gguf))
    assert with_adapter != greedy(model_path=str(base_gguf))


def test_the_kv_cache_is_q8_0_by_default_where_the_heads_allow_it():
    from engine.llamacpp_model import kv_cache_type

    assert kv_cache_type("auto", 64) == "q8_0"  # SmolLM2: 576 wide, 9 heads
    assert kv_cache_type("auto", 16) == "f16"  # the test model: llama.cpp cannot quantise 16-wide heads
    assert kv_cache_type("f16", 64) == "f16" and kv_cache_type("q8_0", 16) == "q8_0"  # a setting is obeyed


def test_a_logit_bias_token_outside_the_vocabulary_is_refused_before_decoding(llama):
    """llama.cpp indexed its logits with the token id and failed mid-answer (index out of bounds, a 503)."""
    from engine.protocol import TokenNotInVocabularyError

    params = SamplingParams(max_tokens=4, logit_bias={llama.current.n_vocab: -100.0})
    for call in (lambda: llama.stream(V0, conversation("Hello!"), params),
                 lambda: llama.stream_prompt(V0, "Hello", params)):
        with pytest.raises(TokenNotInVocabularyError) as refused:
            call()
        assert refused.value.param == "logit_bias" and str(llama.current.n_vocab) in str(refused.value)
    _deltas, done = drain(llama.stream(V0, conversation("Hello!"), SamplingParams(max_tokens=2, logit_bias={0: -100.0})))
    assert done.finish_reason in ("stop", "length")


def test_gpu_layers_auto_offloads_all_layers_only_where_the_build_can():
    import llama_cpp

    from engine.llamacpp_model import ALL_LAYERS, gpu_layers

    assert gpu_layers(12) == 12 and gpu_layers(0) == 0
    assert gpu_layers("auto") == (ALL_LAYERS if llama_cpp.llama_supports_gpu_offload() else 0)
