"""Check a fine-tuning data file before anyone trains on it (``tuneloop data validate``, and the
fine-tuning file upload route).

Errors make a file unusable (missing columns, empty prompts or completions, malformed chat lines);
warnings are worth fixing (duplicates, examples longer than the context, missing or inconsistent
separators and stop sequences, completions without a leading space, too few examples). ``fix``
writes the repaired examples as JSONL.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from engine.chat_tokenizer import ChatTokenizer
from engine.modelstore import resolve_base_model
from feedback.datafiles import DataFile, find_columns, read_data_file
from feedback.errors import FeedbackError
from feedback.examples import ROLES
from tuneloop.core.settings import Settings

MIN_EXAMPLES = 100
CPU_TOKENS_PER_SECOND = 110  # measured: one LoRA epoch of the bundled SmolLM2 on a laptop CPU


@dataclass
class ValidationReport:
    path: Path
    format: str = ""
    kind: str = ""  # prompt_completion | chat
    n_examples: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    total_tokens: int = 0
    max_tokens: int = 0
    tokenizer: str = "characters/4"
    examples: list[dict[str, Any]] = field(default_factory=list, repr=False)  # repaired, for --fix

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def estimated_seconds_per_epoch(self) -> float:
        return round(self.total_tokens / CPU_TOKENS_PER_SECOND, 1)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "file": self.path.name, "format": self.format, "kind": self.kind,
                "examples": self.n_examples, "errors": self.errors, "warnings": self.warnings,
                "total_tokens": self.total_tokens, "max_tokens": self.max_tokens, "tokenizer": self.tokenizer,
                "estimated_seconds_per_epoch_cpu": self.estimated_seconds_per_epoch}


def validate_file(path: Path | str, settings: Settings, *, tokenizer: Any = None) -> ValidationReport:
    """Validate ``path``. ``tokenizer``: a tokenizer, a model directory, or None for the configured base
    model's (falling back to a character estimate when it cannot be loaded)."""
    report = ValidationReport(path=Path(path))
    try:
        data = read_data_file(report.path)
    except FeedbackError as exc:
        report.errors.append(str(exc))
        return report
    report.format, report.n_examples = data.format, len(data.rows)
    count = _token_counter(settings, tokenizer, report)
    if data.is_chat:
        report.kind = "chat"
        _check_chat(data, report, count, settings)
    else:
        report.kind = "prompt_completion"
        _check_prompt_completion(data, report, count, settings)
    if report.n_examples == 0:
        report.errors.append("the file holds no examples")
    elif report.n_examples < MIN_EXAMPLES:
        report.warnings.append(f"only {report.n_examples} examples; fine-tuning usually needs at least "
                               f"{MIN_EXAMPLES} to change the model's behaviour reliably")
    return report


def _check_prompt_completion(data: DataFile, report: ValidationReport, count, settings: Settings) -> None:
    prompt_col, completion_col, problems = find_columns(data)
    if problems:
        report.errors.extend(problems)
        return
    sep, stop = settings.prompt_separator, settings.completion_stop
    empty, long, seen, dupes = [], [], Counter(), []
    no_space = with_sep = with_stop = 0
    for n, row in enumerate(data.rows, 1):
        prompt, completion = str(row.get(prompt_col) or ""), str(row.get(completion_col) or "")
        if not prompt.strip() or not completion.strip():
            empty.append(n)
            continue
        with_sep += prompt.endswith(sep)
        with_stop += completion.endswith(stop)
        no_space += not completion[:1].isspace()
        key = (prompt.strip(), completion.strip())
        seen[key] += 1
        if seen[key] > 1:
            dupes.append(n)
            continue
        tokens = count(prompt + completion)
        _tally(report, tokens, n, long, settings)
        body = prompt[: -len(sep)] if prompt.endswith(sep) else prompt
        answer = completion.strip()
        answer = answer[: -len(stop.strip())].rstrip() if stop.strip() and answer.endswith(stop.strip()) else answer
        report.examples.append({"prompt": body.rstrip() + sep, "completion": " " + answer + stop})
    kept = len(data.rows) - len(empty) - len(dupes)
    _rows_message(report.errors, empty, "empty prompt or completion; fill them in or delete the rows")
    _rows_message(report.warnings, dupes, "duplicate of an earlier example; --fix drops them")
    _long_message(report, long, settings)
    if kept and with_sep == 0:
        report.warnings.append(f"no prompt ends with the separator {sep!r}; the model cannot tell where the "
                               "prompt stops (--fix appends it)")
    elif with_sep < kept:
        report.warnings.append(f"inconsistent separators: {with_sep} of {kept} prompts end with {sep!r} (--fix adds it)")
    if kept and with_stop == 0:
        report.warnings.append(f"no completion ends with the stop sequence {stop!r}; the model will not know "
                               "when to stop (--fix appends it)")
    elif with_stop < kept:
        report.warnings.append(f"inconsistent stop sequences: {with_stop} of {kept} completions end with {stop!r}")
    if no_space:
        report.warnings.append(f"{no_space} completion(s) do not start with a space; tokenizers split words "
                               "differently without it (--fix adds it)")


def _check_chat(data: DataFile, report: ValidationReport, count, settings: Settings) -> None:
    bad, empty, long, dupes, seen = [], [], [], [], set()
    for n, row in enumerate(data.rows, 1):
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages):
            bad.append(n)
            continue
        if messages[-1]["role"] != "assistant" or not any(m["role"] == "user" for m in messages):
            bad.append(n)
            continue
        if any(not m["content"].strip() for m in messages if m["role"] != "system"):
            empty.append(n)
            continue
        key = json.dumps(messages, sort_keys=True)
        if key in seen:
            dupes.append(n)
            continue
        seen.add(key)
        _tally(report, sum(count(m["content"]) + 4 for m in messages), n, long, settings)
        report.examples.append({"messages": messages})
    _rows_message(report.errors, bad, "needs 'messages': a list of {role, content} with a user turn and a "
                                      "final assistant turn")
    _rows_message(report.errors, empty, "empty message content; fill it in or delete the rows")
    _rows_message(report.warnings, dupes, "duplicate of an earlier example; --fix drops them")
    _long_message(report, long, settings)


def _tally(report: ValidationReport, tokens: int, n: int, long: list[int], settings: Settings) -> None:
    report.total_tokens += tokens
    report.max_tokens = max(report.max_tokens, tokens)
    if tokens > settings.context_budget:
        long.append(n)


def _long_message(report: ValidationReport, long: list[int], settings: Settings) -> None:
    _rows_message(report.warnings, long, f"longer than the context ({settings.context_budget} tokens); "
                                         "training truncates it — shorten it or split it")


def _rows_message(target: list[str], rows: list[int], text: str) -> None:
    if rows:
        shown = ", ".join(map(str, rows[:10])) + (f" and {len(rows) - 10} more" if len(rows) > 10 else "")
        target.append(f"row{'s' if len(rows) > 1 else ''} {shown}: {text}")


def _token_counter(settings: Settings, tokenizer: Any, report: ValidationReport):
    if tokenizer is None:
        try:
            tokenizer = resolve_base_model(settings, show_progress=False)
        except Exception as exc:  # noqa: BLE001 - any failure means: estimate instead
            report.warnings.append(f"token counts are estimates (base model's tokenizer unavailable: {exc})")
            return lambda text: max(1, len(text) // 4)
    if isinstance(tokenizer, (str, Path)):
        report.tokenizer = Path(tokenizer).name
        tokenizer = _load_tokenizer(str(tokenizer))
    else:
        report.tokenizer = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


@lru_cache(maxsize=4)
def _load_tokenizer(path: str) -> ChatTokenizer:
    return ChatTokenizer(Path(path))  # the model's own tokenizer files, without loading transformers


def fix_file(report: ValidationReport, out: Path) -> int:
    """Write the repaired examples (separator, stop, leading space added; empty and duplicate rows
    dropped) as JSONL. Returns the number written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for example in report.examples:
            f.write(json.dumps(example, ensure_ascii=False) + "\n")
    return len(report.examples)
