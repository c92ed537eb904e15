"""The experiments' common harness: sizes, overrides, the false-failure budget, progress.
Every check's run at smoke size is in tests/test_smoke_job.py (the main job, run once)."""
import pytest

from sdeverify.experiments import available, get


def test_progress_reaches_its_total():
    """A check reports its sub-runs to ``progress(done, total)`` and ends at done == total
    (the main job's progress bars read it; the job itself runs with --quiet in the tests)."""
    calls = []
    res = get("variance_reduction").run(size="smoke", seed=0, progress=lambda d, t: calls.append((d, t)))
    assert res.passed and calls and calls[-1][0] == calls[-1][1]
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_bad_size():
    with pytest.raises(ValueError, match="size"):
        get("descent_lemma").run(size="huge")
    with pytest.raises(ValueError, match="unknown experiment"):
        get("nope")


@pytest.mark.parametrize("name", available())
def test_every_check_runs_through_the_one_harness(name):
    """Every registered check is built with ``base.experiment``: its ``run`` rejects a typo'd
    override naming the valid keys (before any work), and exposes its sizes and defaults."""
    run = get(name).run
    assert callable(getattr(run, "measure", None)) and set(run.sizes) == {"smoke", "quick", "full"}
    with pytest.raises(ValueError, match=r"unknown overrides \['pathz'\]; valid: \["):
        run(size="smoke", pathz=1)


def test_false_failure_budget_is_used_and_below_one_percent():
    """experiments/budget.py: the calibrated verdicts' shares add up to the main job's design
    bound (< 1% per run), and the checks take their levels from it."""
    from sdeverify.experiments import batch_size, budget, descent_lemma, instruments, sde_limit
    assert set(budget.ALPHA) <= set(available())
    assert sum(budget.ALPHA.values()) <= budget.MAIN_JOB_ALPHA < 0.01
    assert instruments.FAMILY_ALPHA == budget.ALPHA["instruments"]
    assert descent_lemma.TAYLOR_ALPHA + descent_lemma.TERMS_ALPHA == pytest.approx(budget.ALPHA["descent_lemma"])
    assert sde_limit.TWO_SIDED_LEVEL == 1 - budget.ALPHA["sde_limit"] / 4
    assert batch_size.ORACLE_ALPHA == budget.ALPHA["batch_size"]
    with pytest.raises(ValueError, match="n_tests"):
        budget.share("svag", 0)
