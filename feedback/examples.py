"""``TrainingExample``: the one shape a training example has from the export to the trainer.

The export builds them from approved corrections (``feedback.export``); a dataset snapshot writes
them as OpenAI chat lines (our metadata under a ``"tuneloop"`` key OpenAI ignores) and reads them
back as the same type; the trainer (batching, replay, phrasings and memory context), and the gates
read the fields by name. An uploaded file's lines are parsed into it too: chat lines ending with the
assistant's answer, or legacy ``{"prompt", "completion"}`` lines, which keep their raw ``prompt``
and are trained without a chat template.

It lives on the feedback floor because that is where examples are made (``tests/test_layers.py``:
retrain, above, may read it; feedback may not import retrain).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# The roles a training file's messages may have (OpenAI's chat fine-tuning format). A preference (DPO)
# file may also say "developer", OpenAI's newer name for "system", which the DPO trainer reads as system.
ROLES = frozenset({"system", "user", "assistant"})
PREFERENCE_ROLES = ROLES | {"developer"}

# The metadata written into a snapshot's chat line, in this order: the snapshot's content hash is
# computed over these lines, so the order and the set of keys are part of a snapshot's identity.
_RECORD_KEYS = ("id", "correction_id", "lineage_id", "source", "key_facts")


@dataclass(frozen=True)
class TrainingExample:
    """A prompt (chat messages, or raw text for a legacy line) and the answer to train after it."""

    messages: list[dict[str, str]]  # system prompt, earlier turns, the user's question; [] for a legacy line
    completion: str
    id: str = ""
    correction_id: str | None = None
    lineage_id: str | None = None
    split_key: str | None = None  # the lineage deciding the train/validation side (a paraphrase: its parent's)
    source: str = ""
    key_facts: list[str] = field(default_factory=list)
    alternative_questions: list[str] = field(default_factory=list)  # accepted phrasings
    prompt: str | None = None  # a legacy line's prompt text, trained as written
    phrasing: int = 0  # which wording of the correction's question: 0 its own, k its k-th accepted phrasing
    memory_context: bool = False  # True on the copies trained with correction memory in the system prompt

    @property
    def key(self) -> str:
        """What identifies an example across snapshots: the correction's revision (a revised answer is
        new), else the example id."""
        return str(self.correction_id or self.id)

    @property
    def is_legacy(self) -> bool:
        return self.prompt is not None

    @property
    def question(self) -> str:
        """The last user turn (the question the answer answers); a legacy line's prompt text."""
        if self.is_legacy:
            return self.prompt or ""
        return self.messages[-1]["content"] if self.messages else ""

    @property
    def name(self) -> str:
        """How a gate report names it: id and the start of the question."""
        return f"{self.key}: {self.question[:60]}"

    def asking(self, question: str, **changes: Any) -> TrainingExample:
        """The same example with another wording of its question (the last user turn)."""
        return dataclasses.replace(self, messages=[*self.messages[:-1], {"role": "user", "content": question}],
                                   **changes)

    def under_system(self, system: str, **changes: Any) -> TrainingExample:
        """The same example with another system prompt (e.g. with correction memory in it)."""
        return dataclasses.replace(self, messages=[{"role": "system", "content": system}, *self.messages[1:]],
                                   **changes)

    def with_marks(self, **changes: Any) -> TrainingExample:
        return dataclasses.replace(self, **changes)

    # --- the file formats ----------------------------------------------------------------------
    def chat_record(self, *, with_metadata: bool = True) -> dict[str, Any]:
        """The OpenAI chat fine-tuning line (a legacy example: its prompt/completion line)."""
        if self.is_legacy:
            return {"prompt": self.prompt, "completion": self.completion}
        record: dict[str, Any] = {"messages": [*self.messages, {"role": "assistant", "content": self.completion}]}
        if with_metadata:
            meta = {"id": self.id, "correction_id": self.correction_id, "lineage_id": self.lineage_id,
                    "source": self.source, "key_facts": list(self.key_facts)}
            if self.alternative_questions:  # only when there are some: the same hash as before otherwise
                meta["alternative_questions"] = list(self.alternative_questions)
            record["tuneloop"] = meta
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TrainingExample:
        """A snapshot's chat line, an uploaded chat line (ending with the assistant's answer) or a
        legacy ``{"prompt", "completion"}`` line. Raises ValueError naming what is missing."""
        if not isinstance(record, dict):
            raise ValueError("a training example must be a JSON object")
        if "messages" not in record:
            if "prompt" in record and "completion" in record:
                return cls(messages=[], completion=str(record["completion"]), prompt=str(record["prompt"]),
                           id=str(record.get("id") or ""), source="file")
            raise ValueError('a training example needs "messages" (chat) or "prompt" and "completion" (legacy)')
        messages = record.get("messages") or []
        if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "assistant":
            raise ValueError("a training example must end with an assistant message")
        prompt = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages[:-1]]
        meta = record.get("tuneloop") if isinstance(record.get("tuneloop"), dict) else {}
        known = {f.name for f in dataclasses.fields(cls)} - {"messages", "completion", "prompt"}
        return cls(messages=prompt, completion=str(messages[-1]["content"]),
                   **{k: v for k, v in meta.items() if k in known and v is not None})


@dataclass
class PreferencePair:
    """One DPO pair: under the same context (``messages``: system … user), the approved correction
    (``preferred``) over the answer it corrected (``rejected``). A snapshot holds its pairs
    (``retrain.datasets``), so a DPO round is reproduced from its snapshot whatever the live tables
    (the logged answer, retention) say later."""

    messages: list[dict[str, str]]
    preferred: str
    rejected: str
    correction_id: str | None = None

    def to_record(self) -> dict[str, Any]:
        """OpenAI's DPO line, the shape of an uploaded preference file and of what the DPO trainer reads."""
        return {"input": {"messages": self.messages},
                "preferred_output": [{"role": "assistant", "content": self.preferred}],
                "non_preferred_output": [{"role": "assistant", "content": self.rejected}]}

    def to_snapshot_line(self) -> dict[str, Any]:
        return {**self.to_record(), "tuneloop": {"correction_id": self.correction_id}}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "PreferencePair":
        return cls(messages=record["input"]["messages"], preferred=record["preferred_output"][-1]["content"],
                   rejected=record["non_preferred_output"][-1]["content"],
                   correction_id=(record.get("tuneloop") or {}).get("correction_id"))
