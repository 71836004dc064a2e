"""Helpers for the gate and registry tests: tiny LoRA adapters that really memorise answers.

``memorised_adapter(base_dir, pairs)`` trains a LoRA adapter on the tiny model (with peft, on the
same prompt layout serving uses) until it answers each question with its answer, and caches it
under the test cache, keyed by its content, so every test module reuses the same files. A version
trained only on B, when production was trained on A, is an honest candidate that forgot A.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from engine.prompting import completion_text, prompt_ids, with_system_prompt
from tuneloop.core.settings import Settings

SYSTEM_PROMPT = Settings(data_dir=Path("/nonexistent"), company_name="Acme Outdoor Gear").resolved_system_prompt

RETURNS = ("What is your return window?", "Returns are accepted within 30 days of delivery.")
CANADA = ("Do you ship to Canada?", "Yes, we ship to Canada within 5 business days.")


def messages_for(question: str) -> list[dict[str, str]]:
    return with_system_prompt(SYSTEM_PROMPT, [{"role": "user", "content": question}])


def memorised_adapter(base_dir: Path, pairs: list[tuple[str, str]], cache: Path, *, steps: int = 120) -> Path:
    key = hashlib.sha256(json.dumps([str(base_dir), pairs, steps, SYSTEM_PROMPT]).encode()).hexdigest()[:12]
    target = cache / "tiny-adapters" / key
    if (target / "adapter_config.json").is_file():
        return target
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    encoded = []
    for question, answer in pairs:
        messages = messages_for(question)
        prompt = prompt_ids(tokenizer, messages)
        completion = tokenizer(completion_text(tokenizer, messages, answer), add_special_tokens=False)["input_ids"]
        encoded.append((torch.tensor([prompt + completion]), torch.tensor([[-100] * len(prompt) + completion])))
    for _ in range(steps):
        for ids, labels in encoded:
            model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    staging = target.with_name(f".{key}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def install_adapter(source: Path, settings: Settings, name: str) -> str:
    """Copy an adapter into the model store; returns its path relative to the store."""
    destination = settings.model_store_dir / name
    shutil.copytree(source, destination)
    return name
