"""Judging the answers: each gate's verdict on the candidate against production, with its threshold,
and "not measured" (never "passed") for a gate with no questions. See docs/gates.md."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from engine.transformers_model import LoadedModel, perplexity
from retrain.gates.asking import answer_all, engine_used
from retrain.gates.items import GateItem, general_texts
from retrain.gates.matching import match_answers
from tuneloop.core.settings import Settings


GATES = ("learned", "generalises", "not_forgotten", "golden", "general")


@dataclass
class GateOutcome:
    passed: bool
    summary: dict[str, Any]
    items: list[dict[str, Any]]


def evaluate(settings: Settings, candidate: LoadedModel, baseline: LoadedModel, items: list[GateItem],
             texts: list[str] | None = None) -> GateOutcome:
    """Run every gate of ``items`` on both models and judge them (no database involved)."""
    started = time.perf_counter()
    texts = general_texts() if texts is None else texts
    cand_answers = answer_all(candidate, items, settings)
    base_answers = cand_answers if baseline is candidate else answer_all(baseline, items, settings)
    refs, facts = [i.reference for i in items], [i.key_facts for i in items]
    matches = match_answers(cand_answers + base_answers, refs + refs, facts + facts,
                            threshold=settings.gate_similarity_threshold)
    n = len(items)
    rows = []
    for k, item in enumerate(items):
        cand, base = matches[k], matches[n + k]
        rows.append({
            "gate": item.gate, "name": item.name, "question": item.messages[-1]["content"],
            "reference": item.reference, "key_facts": item.key_facts,
            "candidate": {"answer": cand_answers[k], **cand.as_dict()},
            "production": {"answer": base_answers[k], **base.as_dict()},
            "verdict": _verdict(cand.passed, base.passed),
        })
    ppl = None
    if texts:
        cand_ppl = perplexity(candidate, texts)
        ppl = (cand_ppl, cand_ppl if baseline is candidate else perplexity(baseline, texts))
    gates = {gate: _judge(gate, [r for r in rows if r["gate"] == gate], settings, ppl) for gate in GATES}
    reasons = [g["reason"] for g in gates.values() if g["blocks"]]
    summary = {
        "passed": not reasons, "reasons": reasons, "gates": gates,
        "candidate_version_id": candidate.spec.id, "baseline_version_id": baseline.spec.id,
        "thresholds": {k: getattr(settings, k) for k in (
            "gate_similarity_threshold", "gate_learned_min_pass_rate", "gate_generalises_min_pass_rate",
            "gate_forgetting_margin",
            "gate_general_margin", "gate_perplexity_margin", "gate_max_tokens")},
        "seconds": round(time.perf_counter() - started, 1),
        **engine_used(candidate, settings),
    }
    return GateOutcome(not reasons, summary, rows)


def _verdict(candidate_passed: bool, production_passed: bool) -> str:
    if candidate_passed:
        return "pass" if production_passed else "fixed"
    return "newly_failing" if production_passed else "fail"


def _judge(gate: str, rows: list[dict], settings: Settings, ppl: tuple[float, float] | None) -> dict[str, Any]:
    n = len(rows)
    cand = sum(r["candidate"]["passed"] for r in rows)
    prod = sum(r["production"]["passed"] for r in rows)
    cand_rate, prod_rate = (cand / n, prod / n) if n else (1.0, 1.0)
    newly_failing = [r["name"] for r in rows if r["verdict"] == "newly_failing"]
    result: dict[str, Any] = {"total": n, "candidate_passed": cand, "production_passed": prod,
                              "candidate_rate": round(cand_rate, 4), "production_rate": round(prod_rate, 4),
                              "newly_failing": newly_failing}
    eps = 1e-9
    if gate == "learned":
        ok = cand_rate + eps >= settings.gate_learned_min_pass_rate
        reason = (f"learned: the candidate answered {cand}/{n} new or validation corrections correctly; "
                  f"needs {settings.gate_learned_min_pass_rate:.0%}")
    elif gate == "generalises":
        ok = cand_rate + eps >= settings.gate_generalises_min_pass_rate
        reason = (f"generalises: the candidate answered {cand}/{n} held-out phrasings of the new corrections "
                  f"correctly; needs {settings.gate_generalises_min_pass_rate:.0%}")
    elif gate == "not_forgotten":
        ok = cand_rate + eps >= prod_rate - settings.gate_forgetting_margin
        reason = (f"not_forgotten: pass rate {cand_rate:.0%} vs production {prod_rate:.0%} (margin "
                  f"{settings.gate_forgetting_margin:.0%}); newly failing: {', '.join(newly_failing)}")
    elif gate == "golden":
        ok = cand == n
        failing = [r["name"] for r in rows if not r["candidate"]["passed"]]
        reason = f"golden: {n - cand} must-pass question(s) failed: {', '.join(failing)}"
    else:
        gained = sum(r["verdict"] == "fixed" for r in rows)
        p_value = worse_p_value(len(newly_failing), gained)
        result.update(gained=gained, lost=len(newly_failing), p_value=round(p_value, 4))
        ok = (cand_rate + eps >= prod_rate - settings.gate_general_margin
              or p_value >= settings.gate_general_significance)
        reason = (f"general: pass rate {cand_rate:.0%} vs production {prod_rate:.0%} "
                  f"(margin {settings.gate_general_margin:.0%}); {len(newly_failing)} lost, {gained} gained, "
                  f"p={p_value:.3f} < {settings.gate_general_significance}: {', '.join(newly_failing)}")
        if ppl is not None:
            limit = ppl[1] * (1 + settings.gate_perplexity_margin)
            result.update(candidate_perplexity=round(ppl[0], 3), production_perplexity=round(ppl[1], 3))
            if ppl[0] > limit:
                reason = reason if not ok else "general:"
                reason += (f" perplexity {ppl[0]:.2f} vs production {ppl[1]:.2f} "
                           f"(allowed up to {limit:.2f})")
                ok = False
    result["measured"] = n > 0
    if n == 0:  # nothing was asked: reported as not measured, never as passed
        result["note"] = "not measured: no questions for this gate"
        ok = gate not in BLOCKING_WHEN_EMPTY
        reason = f"{gate}: not measured (no questions); {NOT_MEASURED_HINTS.get(gate, '')}"
    result["passed"] = ok and n > 0  # a gate nobody could fail is never "passed"
    result["blocks"] = not ok
    result["status"] = "not measured" if n == 0 else ("passed" if ok else "failed")
    result["reason"] = "" if ok else reason
    return result


# A candidate with no new correction to check it on (trained from an uploaded file, or nothing new)
# cannot be promoted without an admin's written reason. The other gates may honestly have nothing to
# ask (round 1 has nothing earlier to forget; a new deployment has no golden set): they are reported
# as not measured, which neither passes nor blocks.
BLOCKING_WHEN_EMPTY = {"learned"}


NOT_MEASURED_HINTS = {
    "learned": "the training data held no approved corrections to check the candidate on (an uploaded file?)",
    "not_forgotten": "there are no earlier approved corrections yet",
    "golden": "add must-pass questions (POST /v1/golden)",
    "generalises": "no new correction has two or more accepted phrasings to hold one out",
    "general": "the general question set is empty",
}


def worse_p_value(lost: int, gained: int) -> float:
    """One-sided exact sign test (McNemar) on the questions only one version answers correctly: the
    chance of losing at least ``lost`` of the ``lost + gained`` if neither version were better."""
    n = lost + gained
    return sum(math.comb(n, k) for k in range(lost, n + 1)) / 2 ** n if n else 1.0
