"""The data validator on good and broken files of every format, and --fix."""

from __future__ import annotations

import csv
import json

import pytest

from feedback.validate import fix_file, validate_file

SEP, STOP = "\n\n###\n\n", " END"
GOOD = [{"prompt": f"Customer: question {i}?{SEP}", "completion": f" Answer {i}.{STOP}"} for i in range(120)]


def write(path, rows, fmt):
    if fmt in ("csv", "tsv"):
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t" if fmt == "tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "xlsx":
        from openpyxl import Workbook

        wb = Workbook()
        ws = wb.active
        ws.append(list(rows[0]))
        for row in rows:
            ws.append(list(row.values()))
        wb.save(path)
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def settings(make_settings):
    return make_settings()


@pytest.fixture
def check(settings, tiny_model_dir):
    return lambda path: validate_file(path, settings, tokenizer=tiny_model_dir)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "xlsx", "json", "jsonl"])
def test_good_file_of_every_format(tmp_path, check, fmt):
    report = check(write(tmp_path / f"good.{fmt}", GOOD, fmt))
    assert report.ok and report.warnings == [], report.as_dict()
    assert report.n_examples == 120 and report.total_tokens > 120 * 5
    assert report.estimated_seconds_per_epoch == round(report.total_tokens / 110, 1)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "xlsx", "json", "jsonl"])
def test_broken_file_of_every_format(tmp_path, check, fmt):
    rows = [{"prompt": "Where is my order?", "completion": "Tracking is in your email."},  # no sep/stop/space
            {"prompt": "Where is my order?", "completion": "Tracking is in your email."},  # duplicate
            {"prompt": "Refund?" + SEP, "completion": ""},  # empty
            {"prompt": "long " * 3000 + SEP, "completion": " ok" + STOP}]
    report = check(write(tmp_path / f"bad.{fmt}", rows, fmt))
    text = "\n".join(report.errors + report.warnings)
    assert not report.ok
    assert "row 3: empty prompt or completion" in text
    assert "row 2: duplicate" in text
    assert "row 4: longer than the context (2048 tokens)" in text
    assert "inconsistent separators: 1 of 2" in text
    assert "do not start with a space" in text
    assert "only 4 examples" in text
    fixed = fix_file(report, tmp_path / "fixed.jsonl")
    assert fixed == 2
    again = check(tmp_path / "fixed.jsonl")
    assert again.ok and all("separator" not in w and "space" not in w for w in again.warnings)
    first = json.loads((tmp_path / "fixed.jsonl").read_text().splitlines()[0])
    assert first == {"prompt": "Where is my order?" + SEP, "completion": " Tracking is in your email." + STOP}


def test_misnamed_columns_are_named_with_the_fix(tmp_path, check):
    report = check(write(tmp_path / "cols.csv", [{"promt": "q", "Answer ": "a"}], "csv"))
    assert not report.ok
    assert any("rename column 'promt' to 'prompt'" in e for e in report.errors)
    missing = check(write(tmp_path / "none.csv", [{"text": "q", "label": "a"}], "csv"))
    assert any("missing column 'prompt'" in e and "columns found: text, label" in e for e in missing.errors)


def test_chat_files(tmp_path, check):
    good = [{"messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"A{i}."}]}
            for i in range(100)]
    assert check(write(tmp_path / "chat.jsonl", good, "jsonl")).ok
    bad = good[:2] + [{"messages": [{"role": "user", "content": "no answer"}]}, {"messages": "text"}]
    report = check(write(tmp_path / "badchat.jsonl", bad, "jsonl"))
    assert any(e.startswith("rows 3, 4: needs 'messages'") for e in report.errors)


def test_unreadable_files_say_what_to_do(tmp_path, check):
    (tmp_path / "notes.txt").write_text("hello")
    assert "use .csv, .tsv, .xlsx, .json or .jsonl" in check(tmp_path / "notes.txt").errors[0]
    (tmp_path / "fake.xlsx").write_text("prompt,completion\n")
    assert "not an Excel workbook" in check(tmp_path / "fake.xlsx").errors[0]
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "completion": " b"}\n{oops\n')
    assert "line 2: not valid JSON" in check(tmp_path / "broken.jsonl").errors[0]
    (tmp_path / "obj.json").write_text('{"prompt": "a"}')
    assert "expected a JSON list of objects" in check(tmp_path / "obj.json").errors[0]
    (tmp_path / "empty.csv").write_text("prompt,completion\n")
    assert check(tmp_path / "empty.csv").errors == ["the file holds no examples"]
