"""SVAG / large-lr experiment (Def 6.1, THEORY §9): stability maths, the verdict rules
(including negative controls that must fail), and the reduced-size run CI executes."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sdeverify.experiments import svag


@settings(max_examples=40)
@given(st.floats(0.0, 0.95), st.floats(0.02, 0.98), st.floats(1.02, 3.0))
def test_spectral_radius_crosses_one_at_the_predicted_threshold(beta, below, above):
    """THEORY §9 (derived): ρ < 1 strictly below 2(1+β)/(1−β) (2 for SGD), ρ > 1 above."""
    th = svag.threshold(beta)
    assert svag.spectral_radius(below * th, beta) < 1.0
    assert svag.spectral_radius(above * th, beta) > 1.0
    assert svag.spectral_radius(th, beta) == pytest.approx(1.0, abs=1e-7)


def test_spectral_radius_of_sgd_is_one_minus_eta_h():
    for eh in (0.3, 1.0, 1.7, 2.5):
        assert svag.spectral_radius(eh, 0.0) == pytest.approx(abs(1 - eh), abs=1e-12)


def test_stability_verdicts_fail_for_a_wrong_threshold(monkeypatch):
    """Negative control: if the predicted thresholds were 20% too low, the 1.03x runs would not
    diverge and every stability verdict must fail."""
    true = svag.threshold
    monkeypatch.setattr(svag, "threshold", lambda beta: 0.8 * true(beta))
    _, verdicts = svag._stability(256, 0)
    assert [v.passed for v in verdicts[:3]] == [False, False, False]


def test_gap_verdicts_fail_without_a_gap_or_without_closure():
    ells = (1, 2, 4, 8)
    sem = np.full(4, 0.01)
    no_gap = {"gap": np.array([0.005, 0.004, 0.002, 0.001]), "gap_sem": sem}
    assert not svag._gap_verdicts("ctrl", ells, no_gap, exact=False)[0].passed
    growing = {"gap": np.array([1.0, 0.1, 0.2, 0.4]), "gap_sem": sem}
    v = svag._gap_verdicts("ctrl", ells, growing, exact=False)
    assert v[0].passed and not v[1].passed
    sign_change = {"gap": np.array([1.0, 0.1, 0.05, -0.02]), "gap_sem": sem}
    assert not svag._gap_verdicts("ctrl", ells, sign_change, exact=False)[1].passed
    wrong_exact = dict(growing, gap=np.array([1.0, 0.5, 0.25, 0.125]),
                       gap_exact=np.array([1.0, 0.5, 0.25, 0.5]))
    v = svag._gap_verdicts("ctrl", ells, wrong_exact, exact=True)
    assert v[0].passed and not v[1].passed and "exact gap" in v[1].claim


def test_run_rejects_bad_ells():
    with pytest.raises(ValueError, match="ells"):
        svag.run(size="smoke", ells=(2, 4, 8, 16))
    with pytest.raises(ValueError, match="size"):
        svag.run(size="huge")


def test_gap_order_is_two_sided_on_the_quadratic():
    """Negative control: exact gaps that vanish like 1/l² (an oracle that made the
    gap close too fast) fail the quadratic's "order 1 in 1/l" verdict, though the Monte Carlo
    gaps match them and the order interval lies above 0."""
    ells = (1, 2, 4, 8, 16)
    sem = np.full(5, 1e-5)
    for p, ok in ((1.0, True), (2.0, False)):
        ex = 0.1 / np.array(ells, float) ** p * (1 + 0.1 / np.array(ells, float))
        g = {"gap": ex.copy(), "gap_sem": sem, "gap_exact": ex}
        v = svag._gap_verdicts("ctrl", ells, g, exact=True)
        assert v[0].passed and v[1].passed and v[2].passed is ok
