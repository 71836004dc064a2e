"""The page section and plot of ``bench/loop.py``: one section per knowledge base and arm of
docs/benchmarks.md, and docs/img/loop-<kb>.png."""

from __future__ import annotations

from pathlib import Path

from common import ROOT, machine, write_section


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    labels = ["base", "base +\nmemory", "round 1\nweights", "round 1 +\nmemory"]
    values = [results["before"]["paraphrases"]["right"], results["instant_fix"]["reworded"]["right"],
              results["after1"]["memory_off"]["right"], results["after1"]["memory_on"]["right"]]
    wrong = [results["before"]["paraphrases"]["wrong_fact"], results["instant_fix"]["reworded"]["wrong_fact"],
             results["after1"]["memory_off"]["wrong_fact"], results["after1"]["memory_on"]["wrong_fact"]]
    colors = ["#999", "#9bd", "#48a", "#246"]
    for label, key, color in (("base +\nmemory,\nfitted", "instant_fix_refit", "#7ac"),
                              ("round 1 +\nmemory,\nfitted", "after1_refit", "#135")):
        if key in results:
            labels.append(label)
            values.append(results[key]["reworded"]["right"])
            wrong.append(results[key]["reworded"]["wrong_fact"])
            colors.append(color)
    left.bar(labels, [100 * v for v in values], color=colors, label="right")
    left.bar(labels, [-100 * w for w in wrong], color="#c44", label="wrong fact stated")
    left.axhline(90, linestyle="--", color="#a44", linewidth=1)
    left.axhline(0, color="#333", linewidth=0.8)
    left.set_ylabel("held-out rewordings (%)")
    left.set_ylim(-50, 100)
    left.legend(fontsize=8, loc="lower left")
    left.set_title(f"{results['kb']}", fontsize=9)
    stages = ["snapshot", "training", "gates", "swap"]
    rounds = [k for k in ("round1_loop", "round2_loop") if k in results]
    bottom = [0.0] * len(rounds)
    for stage in stages:
        widths = [results[r]["seconds"][stage] for r in rounds]
        right.barh([r.replace("_loop", "") for r in rounds], widths, left=bottom, label=stage)
        bottom = [b + w for b, w in zip(bottom, widths)]
    right.set_xlabel("seconds from last approval to serving")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _outcomes(judgement: dict) -> str:
    """"verified 70 (70 right, 0 wrong-fact), handoff 40 (0 / 0), ..." for one judged set."""
    parts = []
    for outcome in ("verified", "verified after clarify", "handoff after clarify", "handoff", "grounded", "none",
                    "off"):
        c = judgement["by_outcome"].get(outcome)
        if c:
            parts.append(f"{outcome} {c['n']} ({c['right']} right, {c['wrong_fact']} wrong-fact)")
    return "; ".join(parts)


def report(results: dict) -> str:
    pct = lambda v: f"{100 * v:.0f}%"  # noqa: E731
    m = machine()
    arm = "the author accepts **every** phrasing suggestion offered" if results["accept_all"] else \
        "the author accepts the suggestions that are the KB's customer wordings of the same fact"
    lines = [
        f"### {results['kb']}" + (" — every suggestion accepted" if results["accept_all"] else ""), "",
        f"Measured {m['date']} on {m['cores']} CPU cores (torch {m['torch']}), SmolLM2-135M-Instruct, default settings, "
        f"through the HTTP API: examples/{results['kb']}_kb.jsonl, round 1 = {results['round1']} corrections, round 2 = "
        f"{results['round2']} more; {arm}. Rewordings are the 3 held-out paraphrases per fact (never trained on, never "
        "accepted); right = every key fact; wrong-fact = states another fact's key fact or a number, price, duration or "
        "contact the right answer does not hold. When the bot asks back (\"Do you mean ...?\", outcome clarify), the "
        "customer says yes if the question offered is about their fact and no otherwise (offered a numbered list, "
        "the number of the question about their fact if the reply shows it, or no); after a no the bot may list the "
        "next questions found, answered the same way, and the bot's reply after the customer's last answer is the "
        "one judged.", "",
        "| round | corrections | snapshot (s) | training (s) | gates (s) | swap (s) | last approval → serving (s) | gates |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, n in (("round1_loop", results["round1"]), ("round2_loop", results["round2"])):
        if key in results:
            s = results[key]["seconds"]
            verdict = "passed" if results[key]["gates_passed"] else "failed: " + "; ".join(results[key]["gate_reasons"])
            lines.append(f"| {key[:6]} | {n} | {s['snapshot']:.1f} | {s['training']:.0f} | {s['gates']:.0f} | "
                         f"{s['swap']:.1f} | **{s['total']:.0f}** | {verdict} |")
    fix = results["instant_fix"]
    a1 = results["after1"]
    lines += [
        "", "| rewordings of round 1 | right | wrong-fact replies | verified wrong | by outcome |", "|---|---|---|---|---|",
        f"| base model, memory off | {pct(results['before']['paraphrases']['right'])} | "
        f"{results['before']['paraphrases']['wrong_fact_n']} | — | — |",
        f"| instant fix (approved, not trained), memory on | **{pct(fix['reworded']['right'])}** | "
        f"{fix['reworded']['wrong_fact_n']} | {fix['reworded']['verified_wrong']} | {_outcomes(fix['reworded'])} |",
        f"| after round 1, memory on | **{pct(a1['memory_on']['right'])}** | {a1['memory_on']['wrong_fact_n']} | "
        f"{a1['memory_on']['verified_wrong']} | {_outcomes(a1['memory_on'])} |",
        f"| after round 1, weights alone | **{pct(a1['memory_off']['right'])}** | {a1['memory_off']['wrong_fact_n']} | — | — |",
    ]
    refits = [(label, results[key]) for label, key in (("instant fix, selector fitted for the base version",
                                                          "instant_fix_refit"),
                                                         ("after round 1, selector fitted for the new version",
                                                          "after1_refit")) if key in results]
    lines += [f"| {label}, memory on | **{pct(r['reworded']['right'])}** | {r['reworded']['wrong_fact_n']} | "
              f"{r['reworded']['verified_wrong']} | {_outcomes(r['reworded'])} |" for label, r in refits]
    if "after2" in results:
        a2 = results["after2"]
        lines += [f"| after round 2, weights alone | {pct(a2['round1_memory_off']['right'])} | "
                  f"{a2['round1_memory_off']['wrong_fact_n']} | — | — |",
                  f"| round 2's own rewordings after round 2, memory on | {pct(a2['round2_memory_on']['right'])} | "
                  f"{a2['round2_memory_on']['wrong_fact_n']} | {a2['round2_memory_on']['verified_wrong']} | "
                  f"{_outcomes(a2['round2_memory_on'])} |",
                  f"| round 2's own rewordings after round 2, weights alone | {pct(a2['round2_memory_off']['right'])} | "
                  f"{a2['round2_memory_off']['wrong_fact_n']} | — | — |"]
    lines += ["", f"Exact questions, instant fix: {pct(fix['exact']['right'])} right ({_outcomes(fix['exact'])}). "
              f"Off-topic shop questions ({fix['offtopic']['n']}, no fact answers them): {fix['offtopic']['verified']} "
              f"verified (wrong), {fix['offtopic']['handoff']} handed off "
              f"({fix['offtopic'].get('clarified', 0)} of them after the customer said no to a clarifying question or list), "
              f"{fix['offtopic']['wrong_fact']} other replies stating a number or contact."]
    for label, r in refits:
        fit, off = r["fit"], r["offtopic"]
        weights = ", ".join(f"{n} {w:+.2f}" for n, w in zip(fit["selector"]["features"], fit["selector"]["weights"]))
        verified_at = "the setting" if fit["verified_probability"] is None else f"{fit['verified_probability']:.2f}"
        lines.append(f"{label[0].upper() + label[1:]}: {'fitted' if fit['fitted'] else 'too little data, defaults'} on "
                     f"{fit['positives']} accepted phrasings and {fit['negatives']} logged uncovered questions "
                     f"({results.get('uncovered_logged', '?')} asked by earlier customers), "
                     f"{'served model + retrieval' if fit['scored_by_model'] else 'retrieval alone'}: {weights}, "
                     f"bias {fit['selector']['bias']:+.2f}, verified at probability ≥ {verified_at}; the off-topic "
                     f"questions never logged ({off['n']}): {off['verified']} verified (wrong), {off['handoff']} "
                     f"handed off, {off['wrong_fact']} other replies stating a number or contact; general "
                     f"questions right with memory on {r['general']['memory_on']} (handed off {r['general']['handoff']}, "
                     f"asked back {r['general']['clarify']}).")
    if "after2" in results:
        lost = max(0, round((a1['canonical_memory_off'] - results['after2']['round1_canonical_memory_off'])
                            * results['round1']))
        lines.append(f"Round-1 exact questions, weights alone: {pct(a1['canonical_memory_off'])} after round 1, "
                     f"{pct(results['after2']['round1_canonical_memory_off'])} after round 2 ({lost} net lost).")
    for key in ("phrasings1", "phrasings2"):
        if results.get(key) and results.get("phrasings"):
            ph = results[key]
            lines.append(f"Round {key[-1]}: {ph['suggested']} phrasing suggestions offered from the logs "
                         f"({ph['wordings']} customer wordings logged), {ph['accepted']} accepted, "
                         f"{ph.get('withheld', 0)} withheld as asking about another question.")
    general = [results["before"]["general"], a1["general"]] + ([results["after2"]["general"]] if "after2" in results else [])
    lines += ["", f"General questions (bench/general_questions.json, {general[0]['n']}), right with memory off: "
              + " → ".join(str(g["memory_off"]) for g in general) + "; with memory on: "
              + " → ".join(str(g["memory_on"]) for g in general) + " (handed off: "
              + " → ".join(str(g["handoff"]) for g in general) + "; asked back: "
              + " → ".join(str(g.get("clarify", "not counted")) for g in general) + ")."]
    lines += ["", "| gate | " + " | ".join(k[:6] for k in ("round1_loop", "round2_loop") if k in results) + " |",
              "|---|" + "---|" * sum(k in results for k in ("round1_loop", "round2_loop"))]
    for gate in results["round1_loop"]["gates"]:
        cells = []
        for key in ("round1_loop", "round2_loop"):
            if key in results:
                g = results[key]["gates"].get(gate) or {}
                status = g.get("status") or ("passed" if g.get("passed") else "failed")
                cells.append(status if not g.get("total") else f"{status} ({g.get('candidate_passed')}/{g['total']})")
        lines.append(f"| {gate} | " + " | ".join(cells) + " |")
    for key in ("round1_loop", "round2_loop"):
        if key in results:
            m = results[key]["train_metrics"]
            lines.append(f"\n{key[:6]} training stopped at step {m.get('stopped_at_step', m.get('steps'))} of at most "
                         f"{m.get('max_steps', '?')} ({m.get('stop_reason', 'no stop rule')}).")
    lines += ["", f"![the loop on {results['kb']}](img/{_name(results)}.png)"]
    return "\n".join(lines)


def _name(results: dict) -> str:
    return f"loop-{results['kb']}" + ("-accept-all" if results["accept_all"] else "")


def render(results: dict) -> None:
    plot(results, ROOT / "docs" / "img" / f"{_name(results)}.png")
    write_section(_name(results), report(results), results)
