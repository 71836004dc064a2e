"""The tokenizer the llama.cpp engine serves with (no transformers) gives the prompts and text that
the transformers tokenizer gives, on the real SmolLM2 files and the test model's."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from engine.chat_tokenizer import ChatTokenizer, eos_ids
from engine.modelstore import ModelNotFoundError
from engine.prompting import completion_text, prompt_ids, prompt_text

CONVERSATIONS = [
    [{"role": "user", "content": "How long do I have to return an item?"}],
    [{"role": "system", "content": "You are Acme's assistant.\n\nVerified answers:\n- Returns: 30 days."},
     {"role": "user", "content": "Can I send back shoes I wore once?"},
     {"role": "assistant", "content": "Yes, within 30 days — unworn items only."},
     {"role": "user", "content": "Und auf Deutsch? Übrigens: 5€ Versand? 🙂  <b>tags</b>\n\ttabs"}],
    [{"role": "user", "content": "   "}],
]
TEXTS = ["Hello, world!", "naïve café — 30 days 🙂", "<|im_start|>user\nhi<|im_end|>\n", "  two  spaces\n\n"]


@pytest.fixture(params=["tiny_model_dir", "real_model_dir"])
def model_dir(request):
    return request.getfixturevalue(request.param)


def test_prompts_and_text_match_transformers(model_dir):
    ours, theirs = ChatTokenizer(model_dir), AutoTokenizer.from_pretrained(model_dir)
    assert ours.chat_template == theirs.chat_template
    for messages in CONVERSATIONS:
        assert prompt_text(ours, messages) == prompt_text(theirs, messages)
        assert prompt_ids(ours, messages) == prompt_ids(theirs, messages)
        assert completion_text(ours, messages, "Thirty days.") == completion_text(theirs, messages, "Thirty days.")
        assert ours.apply_chat_template(messages, add_generation_prompt=True) == \
            theirs.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    for text in TEXTS:
        ids = ours(text, add_special_tokens=False)["input_ids"]
        assert ids == theirs(text, add_special_tokens=False)["input_ids"]
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
    assert (ours.eos_token, ours.eos_token_id) == (theirs.eos_token, theirs.eos_token_id)
    assert theirs.eos_token_id in eos_ids(model_dir, ours)


def test_a_directory_without_tokenizer_files_names_what_is_missing(tmp_path):
    with pytest.raises(ModelNotFoundError, match="tokenizer.json"):
        ChatTokenizer(tmp_path)
