"""The general gate tolerates chance flips of a few borderline answers, not real damage."""

import pytest

from retrain.gates.judging import _judge, worse_p_value


def rows(lost: int, gained: int, kept: int = 10) -> list[dict]:
    def row(name, cand, prod):
        verdict = {(True, True): "pass", (True, False): "fixed", (False, True): "newly_failing"}.get((cand, prod), "fail")
        return {"name": name, "candidate": {"passed": cand}, "production": {"passed": prod}, "verdict": verdict}

    return ([row(f"lost{i}", False, True) for i in range(lost)] + [row(f"gained{i}", True, False) for i in range(gained)]
            + [row(f"kept{i}", True, True) for i in range(kept)])


def test_sign_test_p_values():
    assert worse_p_value(0, 0) == 1.0
    assert worse_p_value(2, 0) == 0.25
    assert worse_p_value(5, 0) == 1 / 32
    assert worse_p_value(3, 1) == pytest.approx(5 / 16)


def test_two_lost_of_fifteen_pass_five_lost_fail_and_are_named(make_settings):
    settings = make_settings()
    flipped = _judge("general", rows(lost=2, gained=0, kept=13), settings, None)
    assert flipped["passed"] and flipped["lost"] == 2 and flipped["p_value"] == 0.25
    damaged = _judge("general", rows(lost=5, gained=0, kept=10), settings, None)
    assert not damaged["passed"] and "5 lost, 0 gained" in damaged["reason"] and "lost4" in damaged["reason"]
    strict = _judge("general", rows(lost=2, gained=0, kept=13), make_settings(gate_general_significance=1.0), None)
    assert not strict["passed"]  # margin alone: 87% vs 100%


def test_perplexity_still_fails_a_candidate(make_settings):
    result = _judge("general", rows(lost=0, gained=0), make_settings(), (30.0, 10.0))
    assert not result["passed"] and "perplexity 30.00" in result["reason"]
