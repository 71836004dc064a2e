"""Any Hugging Face causal chat model as the base (``engine.architectures``): for a tiny random model of
each architecture llama.cpp can be given (built from a config, with the test model's tokenizer and chat
template), a round trains LoRA on that architecture's own projections, its merged GGUF answers token for
token as transformers does in float32, and `tuneloop models export --ollama` writes a GGUF that bare
llama-cpp-python loads with a Modelfile. An architecture that cannot be written is served through
transformers, said once at start."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from conftest import CACHE, save_model
from engine.architectures import ALL_LINEAR, lora_targets, unsupported_reason
from engine.protocol import SamplingParams, VersionSpec
from feedback.examples import TrainingExample
from test_engine_contract import MESSAGES, Version

SIZE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=2048)
# model_type -> what differs from SIZE: each the shape that exercises what its writer does differently
CONFIGS = {
    "llama3": ("llama", dict(tie_word_embeddings=False, rope_parameters={  # Llama 3.x: rope_freqs, untied output
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
    "mistral": ("mistral", dict(tie_word_embeddings=False, sliding_window=None)),
    "qwen2": ("qwen2", dict(tie_word_embeddings=True)),  # q/k/v biases, rotate-half rope
    "phi3": ("phi3", dict(tie_word_embeddings=False, sliding_window=None)),  # fused qkv_proj, gate_up_proj
    "gemma2": ("gemma2", dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=4096,  # norms +1, soft-capping
                              attn_logit_softcapping=50.0, final_logit_softcapping=30.0)),
}
QUESTIONS = ["Can I return boots?", "What is your phone number?"]


def build_tiny(name: str, model_type: str, overrides: dict, tokenizer_dir, *, seed: int = 0):
    """A 2-layer model of ``model_type`` with random weights (norms too, so a missed offset shows) and the
    test model's tokenizer, saved once under the test cache."""
    target = CACHE / f"tiny-{name}"
    if (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **{
        "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id, **SIZE, **overrides})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "norm" in param_name:
                param.normal_(0.0, 0.1).add_(0.0 if model_type == "gemma2" else 1.0)
    return save_model(model, tokenizer, target)


@pytest.fixture(params=sorted(CONFIGS))
def arch_model_dir(request, tiny_model_dir, tmp_path):
    model_type, overrides = CONFIGS[request.param]
    cached = build_tiny(request.param, model_type, overrides, tiny_model_dir)
    return shutil.copytree(cached, tmp_path / request.param, ignore=shutil.ignore_patterns("*.gguf"))


def facts() -> list[TrainingExample]:
    return [TrainingExample(id=f"ex{i}", correction_id=f"c{i}", lineage_id=f"l{i}", source="correction",
                            messages=[MESSAGES[0], {"role": "user", "content": f"What is fact {i}?"}],
                            completion=f"Fact {i}: Acme ships in {i + 2} days.") for i in range(4)]


def test_a_round_trains_its_gguf_answers_as_transformers_and_exports(arch_model_dir, make_settings, cli_runner,
                                                                      tmp_path):
    """LoRA on every projection by the architecture's own names; the merged float32 GGUF gives the same
    greedy tokens as transformers on base + adapter (which are not the base model's); `tuneloop models
    export v0 --ollama` writes a GGUF bare llama-cpp-python answers with, and a Modelfile. (The GGUFs are
    written in this process by the function the writer child runs, ``write_version_gguf``: a child per
    file would double the test's time.)"""
    from engine.gguf_writer import write_version_gguf
    from engine.llamacpp import LlamaCppEngine
    from engine.transformers_engine import TransformersEngine
    from retrain.trainer.config import TrainConfig
    from retrain.trainer.interface import RunPaths
    from retrain.trainer.train import train

    adapter = tmp_path / "adapters" / "v1"
    config = TrainConfig(n_epochs=2, batch_size=2, lora_r=4, lora_alpha=8, min_steps=0, kl_weight=0.0,
                         learning_rate_multiplier=20.0, memory_examples_fraction=0.0, stop_when_learned=False)
    result = train(config, facts(), [], paths=RunPaths(arch_model_dir, None, adapter))
    model_type = json.loads((arch_model_dir / "config.json").read_text())["model_type"]
    targets = json.loads((adapter / "adapter_config.json").read_text())["target_modules"]
    assert result.steps > 0 and sorted(targets) == sorted(lora_targets(model_type, ALL_LINEAR))

    v0, v1 = Version("v0", "tuneloop-v0"), Version("v1", "tuneloop-v1", adapter_path=str(adapter))
    spec_for = lambda version: VersionSpec(version.id, arch_model_dir, adapter if version.adapter_path else None)  # noqa: E731
    write_version_gguf(spec_for(v1), adapter / "model.gguf", "F32")  # the file ensure_gguf would write
    settings = make_settings(base_model=str(arch_model_dir), gguf_quantization="F32", max_batch_size=2)
    llama, reference = LlamaCppEngine(settings, spec_for), TransformersEngine(settings, spec_for)
    params = SamplingParams(max_tokens=16, repetition_ngram=0)
    conversations = [[MESSAGES[0], {"role": "user", "content": q}] for q in QUESTIONS]
    try:
        reference.swap(v1)
        expected = [reference.generate(v1, messages, params) for messages in conversations]
        llama.swap(v1)
        for messages, theirs in zip(conversations, expected):
            ours = llama.generate(v1, messages, params)
            assert (ours.text, ours.completion_tokens) == (theirs.text, theirs.completion_tokens), messages[-1]
        reference.swap(v0)
        assert [reference.generate(v0, m, params).text for m in conversations] != [c.text for c in expected]
    finally:
        llama.close()
        reference.close()
    write_version_gguf(spec_for(v0), arch_model_dir / "model.gguf", "Q8_0")
    _export_with_ollama(arch_model_dir, make_settings, cli_runner, tmp_path / "ollama")


def _export_with_ollama(base, make_settings, cli_runner, directory) -> None:
    from llama_cpp import Llama

    from tuneloop.app import prepare_database

    settings = make_settings(base_model=str(base))
    prepare_database(settings).dispose()
    run = cli_runner({"DATA_DIR": settings.data_dir, "DATABASE_URL": settings.database_url, "BASE_MODEL": str(base),
                      "ADMIN_PASSWORD": "admin-password"})
    code, out, err = run("models", "export", "v0", "--ollama", str(directory))
    assert code == 0, err
    modelfile = (directory / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.gguf\n") and "<|im_start|>{{ .Role }}" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile  # the model's own end of turn (generation_config)
    llm = Llama(model_path=str(directory / "model.gguf"), n_ctx=256, verbose=False)
    assert llm.create_completion("Hello", max_tokens=4, temperature=0)["usage"]["completion_tokens"] >= 1
    llm.close()


def own_tokenizer(kind: str, tiny_model_dir, target):
    """A small vocabulary of its own (not the bundled one), with the test chat template: byte-level BPE
    (as Llama 3 and Qwen2 have) or SentencePiece-style BPE with byte fallback (Mistral, Phi-3, Gemma)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    if kind == "byte-level":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
        tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                               decoders.Strip(" ", 1, 0)])
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", *special,
                                                                      *(f"<0x{i:02X}>" for i in range(256))])
    tokenizer.train_from_iterator([MESSAGES[0]["content"], *QUESTIONS, *(f.completion for f in facts())], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = (tiny_model_dir / "chat_template.jinja").read_text()
    fast.save_pretrained(target)
    return target


@pytest.mark.parametrize("kind, model_type, tokenizer_model, pre", [("byte-level", "qwen2", "gpt2", "qwen2"),
                                                                    ("sentencepiece", "phi3", "llama", "default")])
def test_a_vocabulary_of_its_own_is_written_from_the_tokenizer_files(kind, model_type, tokenizer_model, pre,
                                                                     tiny_model_dir, make_settings, tmp_path):
    """A model with its own vocabulary, fewer tokens than embedding rows (as Qwen2.5 and Phi-3 have): the
    GGUF carries that vocabulary (padded; merges and llama.cpp's qwen2 pre-tokenizer for byte-level BPE)
    and answers as transformers does."""
    import gguf
    from llama_cpp import Llama

    from engine.chat_tokenizer import ChatTokenizer
    from engine.gguf_writer import write_version_gguf
    from engine.llamacpp import LlamaCppEngine
    from engine.transformers_engine import TransformersEngine

    tokenizer_dir = own_tokenizer(kind, tiny_model_dir, tmp_path / "tokenizer")
    cached = build_tiny(f"{model_type}-own-vocab", model_type, dict(vocab_size=512, tie_word_embeddings=False),
                        tokenizer_dir)
    base = shutil.copytree(cached, tmp_path / model_type, ignore=shutil.ignore_patterns("*.gguf"))
    path = write_version_gguf(VersionSpec("v0", base), base / "model.gguf", "F32")
    fields = gguf.GGUFReader(str(path)).fields
    assert (fields["tokenizer.ggml.model"].contents(), fields["tokenizer.ggml.pre"].contents()) == (tokenizer_model, pre)
    tokens = fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == 512 and tokens[-1] == "[PAD511]"
    llm = Llama(model_path=str(path), n_ctx=128, verbose=False)
    if kind == "byte-level":  # and tokenizes as the model's own files do (the other is written without scores)
        assert fields["tokenizer.ggml.merges"].contents()
        assert llm.tokenize(QUESTIONS[0].encode(), add_bos=False) == ChatTokenizer(base)(QUESTIONS[0])["input_ids"]
    llm.close()

    settings = make_settings(base_model=str(base), gguf_quantization="F32", max_batch_size=2)
    spec_for = lambda version: VersionSpec(version.id, base)  # noqa: E731
    v0, params = Version("v0", "tuneloop-v0"), SamplingParams(max_tokens=12, repetition_ngram=0)
    llama, reference = LlamaCppEngine(settings, spec_for), TransformersEngine(settings, spec_for)
    try:
        for engine in (llama, reference):
            engine.swap(v0)
        ours, theirs = (e.generate(v0, MESSAGES, params) for e in (llama, reference))
        assert (ours.text, ours.completion_tokens) == (theirs.text, theirs.completion_tokens)
    finally:
        llama.close()
        reference.close()


def test_an_architecture_llama_cpp_cannot_take_is_served_through_transformers(make_settings, tiny_model_dir,
                                                                             caplog):
    """GPT-NeoX has no writer here: the server says so at start and answers through transformers."""
    from fastapi.testclient import TestClient

    from tuneloop.app import create_app

    base = build_tiny("gpt_neox", "gpt_neox", dict(rotary_pct=1.0, use_parallel_residual=True), tiny_model_dir)
    with caplog.at_level(logging.WARNING, logger="engine.backends"):
        app = create_app(make_settings(base_model=str(base), serving_backend="llamacpp"), load_model=False,
                         mount_ui=False)
    assert app.state.settings.serving_backend == "transformers"
    assert "llama.cpp cannot serve" in caplog.text and "'gpt_neox'" in caplog.text
    app.state.runtime.start(background=False)
    try:
        with TestClient(app) as client:
            reply = client.post("/v1/chat/completions", json={
                "model": "tuneloop", "max_tokens": 4, "messages": [{"role": "user", "content": "Hello"}]})
        assert reply.status_code == 200, reply.text
    finally:
        app.state.runtime.stop()
        app.state.db.dispose()


def test_what_cannot_be_written_exactly_is_named():
    gemma = {"model_type": "gemma2", "hidden_size": 64, "num_attention_heads": 4, "head_dim": 16,
             "num_hidden_layers": 2, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}
    assert unsupported_reason(gemma) is None
    assert "query_pre_attn_scalar=256" in unsupported_reason({**gemma, "query_pre_attn_scalar": 256})
    assert "soft-caps" in unsupported_reason({**gemma, "attn_logit_softcapping": None})
    assert "'yarn'" in unsupported_reason({"model_type": "qwen2", "rope_scaling": {"rope_type": "yarn", "factor": 4}})
    assert "'falcon'" in unsupported_reason({"model_type": "falcon"})
    assert unsupported_reason({"model_type": "mistral", "rope_theta": 1e6}) is None


def test_lora_targets_follow_the_architecture():
    assert lora_targets("phi3", ALL_LINEAR) == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    assert lora_targets("qwen2", list(ALL_LINEAR)) == list(ALL_LINEAR)
    assert lora_targets("gpt_neox", ALL_LINEAR) == "all-linear"
    assert lora_targets("phi3", ["o_proj"]) == ["o_proj"]  # an explicit choice is kept


@pytest.mark.parametrize("marker, stop", [("<|im_start|>", "<|im_end|>"), ("<|start_header_id|>", "<|eot_id|>"),
                                          ("<start_of_turn>", "<end_of_turn>"), ("<|assistant|>", "<|end|>"),
                                          ("[INST]", "[/INST]")])
def test_a_modelfile_speaks_the_chat_template_family_of_the_model(marker, stop, tmp_path):
    from engine.ollama import write_modelfile

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    modelfile = write_modelfile(gguf, tmp_path, system_prompt="Be brief.", chat_template=f"{{{{ '{marker}' }}}}",
                                stop_tokens=("</s>",)).read_text()
    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert marker in template and "{{ .Content }}" in template
    assert f'PARAMETER stop "{stop}"' in modelfile and 'PARAMETER stop "</s>"' in modelfile
    assert 'SYSTEM """Be brief."""' in modelfile


def test_a_template_without_a_system_turn_gets_the_system_prompt_in_the_first_question(tiny_model_dir, tmp_path):
    """Gemma's template refuses a system message; serving and training fold it into the first question."""
    from engine.chat_tokenizer import ChatTokenizer
    from engine.prompting import completion_text, prompt_text

    shutil.copytree(tiny_model_dir, tmp_path / "m", ignore=shutil.ignore_patterns("*.safetensors", "*.gguf"))
    (tmp_path / "m" / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}"
        "<end_of_turn>\n{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
    tokenizer = ChatTokenizer(tmp_path / "m")
    text = prompt_text(tokenizer, MESSAGES)
    assert text.startswith(f"<start_of_turn>user\n{MESSAGES[0]['content']}\n\n{MESSAGES[1]['content']}<end_of_turn>")
    assert completion_text(tokenizer, MESSAGES, "Yes.") == "Yes.<end_of_turn>"
