"""The main job's self-checks and independent references can fail: negative controls with the
kinds of bugs they exist to catch.  Each case is a few seconds."""
import numpy as np
import pytest

from sdeverify.experiments import hb_equivalence as hb
from sdeverify.experiments import instruments as ins
from sdeverify.experiments import slow_sde as ss
from sdeverify.experiments import weak_approximation as wa
from sdeverify import optim
from sdeverify.problems import CosineWell


def _normals(scale=1.0, shift=0.0, rho=0.0, seed=0):
    g = np.random.default_rng(seed)
    z = g.standard_normal((5, 40_000, 2))
    z[..., 1] = rho * z[..., 0] + np.sqrt(1 - rho ** 2) * z[..., 1]
    return shift + scale * z


def _failed(verdicts):
    return [v.claim for v in verdicts if not v.passed]


def test_generator_checks_pass_on_good_draws_and_fail_on_bad_ones():
    vs, _ = ins.generator_verdicts(_normals())
    assert not _failed(vs)
    assert any("variance 1" in c for c in _failed(ins.generator_verdicts(_normals(scale=1.02))[0]))
    assert any("mean 0" in c for c in _failed(ins.generator_verdicts(_normals(shift=0.015))[0]))
    assert any("Box-Muller pair" in c for c in _failed(ins.generator_verdicts(_normals(rho=0.03))[0]))
    heavy = _normals()
    heavy[0] = np.random.default_rng(1).standard_t(30, heavy[0].shape)   # excess kurtosis 0.23
    assert any("kurtosis" in c for c in _failed(ins.generator_verdicts(heavy)[0]))


def test_engine_draws_are_standard_normal_and_scaled_by_sigma():
    z = ins.engine_draws(4096, 3, seed=5, sigma=2.5)
    assert z.shape == (3, 4096, 2)
    assert abs(z.var() - 1.0) < 0.05          # sigma applied once: Var z = 1, not 2.5²


@pytest.mark.parametrize("p, ok", [(0.95, True), (0.834, False), (0.994, False)])
def test_coverage_rule_detects_intervals_sqrt2_too_narrow_or_wide(p, ok):
    covered = np.random.default_rng(3).random(1000) < p
    v = ins._coverage_verdict("c", covered, (ins.NOMINAL, ins.NOMINAL))
    assert v.passed is ok


def test_coverage_runs_fail_when_standard_errors_are_too_small(monkeypatch):
    from sdeverify.result import SimulationResult
    cov = ins.coverage_runs(150, 256, seed=1)
    assert all(abs(c.mean() - 0.95) < 0.06 for c in cov.values())
    orig = SimulationResult.sem
    monkeypatch.setattr(SimulationResult, "sem", property(lambda self: orig.fget(self) / np.sqrt(2)))
    bad = ins.coverage_runs(150, 256, seed=1)
    assert bad["x0"].mean() < 0.9 and bad["loss"].mean() < 0.9


def test_fit_order_coverage_band(monkeypatch):
    assert ins.FIT_ORDER_BAND[0] <= ins.fit_order_coverage(1500, seed=0).mean() <= ins.FIT_ORDER_BAND[1]
    orig = ins.fit_order
    # (standard errors given too small are *not* such a bug: the reduced-χ² inflation
    # restores the width; an interval that is itself too narrow is)
    def narrow(eta, err, sem=None, level=0.95):
        f = orig(eta, err, sem, level)
        o, h = f.order, (f.order.high - f.order.low) / 2 / np.sqrt(2)
        return type(f)(type(o)(o.estimate, o.estimate - h, o.estimate + h), f.log_c, f.chi2_dof, f.n_points)
    monkeypatch.setattr(ins, "fit_order", narrow)
    v = ins._coverage_verdict("f", ins.fit_order_coverage(1500, seed=0), ins.FIT_ORDER_BAND)
    assert not v.passed


def test_transcriptions_catch_a_coefficient_bug_the_crn_comparison_shares(monkeypatch):
    """A HeavyBall that damps its first step is wrong on both sides of the HB-vs-converted
    comparison (the converter reads HeavyBall.coefficients), but not in the transcription."""
    P = CosineWell(2)
    vs, devs = hb.reference_verdicts(P, 60, np.random.default_rng(0))
    assert not _failed(vs)
    orig = optim.HeavyBall.coefficients

    def damped_first_step(self, steps, dim):
        c = orig(self, steps, dim)
        c.b[0] = 1.0 - float(self.dampening)
        return c
    monkeypatch.setattr(optim.HeavyBall, "coefficients", damped_first_step)
    eta, beta, _ = optim.heavy_ball_to_sgdm(0.01, 0.9, 0.5, steps=60)
    crn = hb._engine_path(P, optim.HeavyBall(0.01, 0.9, 0.5), np.array([1.0, -0.5]), 60)
    conv = hb._engine_path(P, optim.SGDM(eta, beta), np.array([1.0, -0.5]), 60)
    assert hb._rel_dev(crn, conv) < 1e-12                  # the shared-code comparison is blind
    bad = _failed(hb.reference_verdicts(P, 60, np.random.default_rng(0))[0])
    assert any("engine HeavyBall" in c for c in bad) and any("converted" in c for c in bad)


def test_time_varying_beta_catches_averaged_lr_reading_beta_k(monkeypatch):
    etas = 2.0 ** -np.arange(4, 11)
    P = wa.quadratic_problem()

    def order():
        err = []
        for eta in etas:
            sgdm, sgd, _, steps = wa.beta_varying_pair(eta, 1.0)
            err.append(max(wa.exact_errors(P, sgdm, sgd, steps, 0.5 / np.sqrt(eta))))
        return wa.tail_fit(etas, np.array(err)).order
    assert order().low > 0.5

    def beta_k(lr, beta):
        lr, beta = np.asarray(lr, float), np.asarray(beta, float)
        A = np.empty(lr.size + 1)
        A[-1] = lr[-1] / (1 - beta[-1])
        for k in range(lr.size - 1, -1, -1):
            A[k] = lr[k] + beta[k] * A[k + 1]
        return (1 - beta) * A[:-1]
    monkeypatch.setattr(wa, "averaged_lr", beta_k)
    assert order().low <= 0.5


def test_slow_sde_general_formula_verdicts_fail_without_a_term(monkeypatch):
    vs, _ = ss.general_formula_verdicts(1.25, 0, 2000)
    assert not _failed(vs)
    orig = ss.slow_coefficients

    def drop_t1(problem, zeta, sigma):
        b, D = orig(problem, zeta, sigma)
        # keep only the tangential part: drops the −½H⁺∂²(∇L)[Σ_∥] term on the sphere
        P = problem.tangent_projector(zeta)
        return np.einsum("...ij,...j->...i", P, b), D
    import sdeverify.slow_sde as slow_mod
    monkeypatch.setattr(ss, "slow_coefficients", drop_t1)
    monkeypatch.setattr(slow_mod, "slow_coefficients", drop_t1)
    assert _failed(ss.general_formula_verdicts(1.25, 0, 2000)[0])

    def half(problem, zeta, sigma):
        b, D = orig(problem, zeta, sigma)
        return 0.5 * b, D
    monkeypatch.setattr(ss, "slow_coefficients", half)
    monkeypatch.setattr(slow_mod, "slow_coefficients", half)
    bad = _failed(ss.general_formula_verdicts(1.25, 0, 2000)[0])
    assert len(bad) == 2                      # the comparison and the general-path run


def test_slow_sde_general_path_tells_lambda_from_lambda_squared(monkeypatch):
    """The general-path run uses a step lr schedule: dropping the schedule, or taking λ for
    λ² in the drift (λ²-for-λ in the diffusion alike), fails it."""
    import sdeverify.slow_sde as slow_mod
    real = slow_mod.solve_slow_sde
    monkeypatch.setattr(ss, "solve_slow_sde", lambda *a, lr=None, **k: real(*a, **k))
    assert any("schedule" in c for c in _failed(ss.general_formula_verdicts(1.25, 0, 2000)[0]))
    monkeypatch.setattr(ss, "solve_slow_sde", real)
    monkeypatch.setattr(slow_mod, "_lam", lambda lr, t: float(lr(t)) ** 0.5)   # drift λ, noise √λ
    assert any("schedule" in c for c in _failed(ss.general_formula_verdicts(1.25, 0, 2000)[0]))


def test_fit_order_lack_of_fit_coverage_fails_with_a_sqrt_chi2_inflation(monkeypatch):
    """Under lack of fit only the reduced-χ² inflation gives the interval its width: an
    inflation by √χ² (half-width too small by χ_red^½) fails the nominal-coverage rule."""
    cov = ins.fit_order_coverage(1500, seed=0, scatter=ins.LACK_OF_FIT)
    assert ins._coverage_verdict("f", cov, (ins.NOMINAL, ins.NOMINAL), ins.FIT_ORDER_LOF_ALT).passed
    orig = ins.fit_order

    def sqrt_inflation(eta, err, sem=None, level=0.95):
        f = orig(eta, err, sem, level)
        if f.chi2_dof <= 1.0:
            return f
        o = f.order
        h = (o.high - o.low) / 2 / f.chi2_dof ** 0.25
        return type(f)(type(o)(o.estimate, o.estimate - h, o.estimate + h), f.log_c, f.chi2_dof, f.n_points)
    monkeypatch.setattr(ins, "fit_order", sqrt_inflation)
    bad = ins.fit_order_coverage(1500, seed=0, scatter=ins.LACK_OF_FIT)
    assert not ins._coverage_verdict("f", bad, (ins.NOMINAL, ins.NOMINAL)).passed
    # the well-specified family cannot see this bug (χ²_red ≈ 1): the reason for this one
    assert ins._coverage_verdict("f", ins.fit_order_coverage(1500, seed=0), ins.FIT_ORDER_BAND).passed


def test_schedule_definitions_catch_an_off_by_one(monkeypatch):
    from sdeverify import schedules
    vs, _ = hb.schedule_verdicts(np.random.default_rng(1))
    assert not _failed(vs)
    real = schedules.warmup
    monkeypatch.setattr(schedules, "warmup", lambda lr, steps, w: np.roll(real(lr, steps, w), 1))
    bad = _failed(hb.schedule_verdicts(np.random.default_rng(1))[0])
    assert any("warmup" in c for c in bad) and any("cosine" not in c for c in bad)


def test_gradient_consistency_catches_a_loss_off_by_a_factor(monkeypatch):
    """A planted bug, a loss missing its ½, passed every check that reads
    only gradients.  The instruments now compare grad with central differences of loss."""
    import types
    v, _ = ins.gradient_consistency_verdict(0)
    assert v.passed
    bad = types.SimpleNamespace(dim=3, gradient=lambda x: np.asarray(x), value=lambda x: float(x @ x))
    monkeypatch.setattr(ins, "problem_zoo", lambda: {"x -> x.x with grad x": bad})
    assert not ins.gradient_consistency_verdict(0)[0].passed


def test_coverage_runs_see_the_sign_of_the_centre(monkeypatch):
    """The instruments' quadratic has c, b != 0: exact moments that take b + Hc for b − Hc
    (invisible at c = 0) lose their coverage."""
    from sdeverify import theory
    real = theory.quadratic_moments

    def flipped(problem, opt, x0, *, steps, sigma):
        q = type(problem)(problem.hessian, noise_cov=problem.noise_cov, center=-problem.center,
                          linear=problem.linear)
        return real(q, opt, x0, steps=steps, sigma=sigma)
    monkeypatch.setattr(ins.theory, "quadratic_moments", flipped)
    bad = ins.coverage_runs(100, 256, seed=1)
    assert bad["x0"].mean() < 0.5 and bad["loss"].mean() < 0.5


def test_resumed_heavy_ball_conversion_is_checked(monkeypatch):
    """A conversion that forgets the dampening of a resumed buffer's first step (b_0 = 1 − τ)
    passes every fresh-buffer comparison but not the resumed ones."""
    real = hb.heavy_ball_to_sgdm
    monkeypatch.setattr(hb, "heavy_ball_to_sgdm",
                        lambda *a, buffer_empty=True, **k: real(*a, buffer_empty=True, **k))
    bad = _failed(hb.reference_verdicts(CosineWell(2), 60, np.random.default_rng(0))[0])
    assert bad and all("resumed" in c for c in bad)


def test_sde_schedule_verdict_fails_when_lambda_is_dropped(monkeypatch):
    from sdeverify.experiments import sde_limit as sl
    from sdeverify.problems import Quadratic
    p = dict(sl._DEFAULTS)
    quad = Quadratic(np.array(p["quad_hessian"]), noise_cov=np.array(p["quad_noise"]),
                     center=np.array(p["quad_center"]))
    assert sl.schedule_verdict(quad, p)[0].passed
    real = sl.sde.ou_moments
    monkeypatch.setattr(sl.sde, "ou_moments", lambda *a, lam=1.0, **k: real(*a, **k))
    assert not sl.schedule_verdict(quad, p)[0].passed


def test_richardson_verdict_sees_the_extrapolation_factor(monkeypatch):
    """Halving grids make r/(1 − r) = 1: only the other ratios show a missing factor."""
    assert ins.richardson_verdict()[0].passed
    from sdeverify import stats

    def no_factor(x, err):                      # p_n + Δ_n instead of p_n + Δ_n r/(1 − r)
        x, err = np.asarray(x, float), np.asarray(err, float)
        o = np.argsort(-x)
        x, err = x[o], err[o]
        p = stats.local_orders(x, err)
        r = x[-1] / x[-2]
        est = p[-1] + (p[-1] - p[-2])
        hw = 2 * max(abs(p[-1] - p[-2]), abs(p[-2] - p[-3])) * r / (1 - r)
        return stats.Interval(est, est - hw, est + hw, 0.0)
    monkeypatch.setattr(ins, "richardson_order", no_factor)
    assert not ins.richardson_verdict()[0].passed


def test_trainer_init_and_sampler_verdicts_fail_on_their_bugs(monkeypatch):
    from sdeverify.experiments import train_engine as te
    from sdeverify.train import MLP
    from sdeverify.train.batches import BatchSampler
    assert te.init_verdict(0)[0].passed and te.sampler_verdict(0)[0].passed
    real_init = MLP.init
    monkeypatch.setattr(MLP, "init", lambda self, *a, **k: 1.3 * real_init(self, *a, **k))
    assert not te.init_verdict(0)[0].passed
    monkeypatch.setattr(MLP, "init", real_init)
    real_idx = BatchSampler.indices

    def same_epoch(self, start, stop):          # every epoch replays epoch 0's order
        per = self.steps_per_epoch
        first = real_idx(self, 0, per)
        return tuple(np.concatenate([f] * -(-(stop - start) // per))[:stop - start] for f in first)
    monkeypatch.setattr(BatchSampler, "indices", same_epoch)
    assert not te.sampler_verdict(0)[0].passed


def test_extrapolation_verdict_fails_with_the_correction_sign_flipped(monkeypatch):
    from sdeverify import sde
    from sdeverify.experiments import sde_limit as sl
    from sdeverify.problems import Quadratic
    p = dict(sl._DEFAULTS)
    quad = Quadratic(np.array(p["quad_hessian"]), noise_cov=np.array(p["quad_noise"]),
                     center=np.array(p["quad_center"]))
    assert sl.extrapolation_verdict(quad, p)[0].passed
    real = sde.weak_error

    def flipped(*a, **k):                       # errors against E^{2h} instead of 2E^h − E^{2h}
        w = real(*a, **k)
        return type(w)(**{**w.__dict__, "diff": w.diff - 2 * w.em_bias[None]})
    monkeypatch.setattr(sl.sde, "weak_error", flipped)
    assert not sl.extrapolation_verdict(quad, p)[0].passed


def test_cross_term_invariance_catches_a_one_sided_projection(monkeypatch):
    """Σ_∥ = PΣ instead of PΣP agrees with the closed forms (the built-in noises commute with
    P) but not with Σ given tangent-normal cross terms."""
    import sdeverify.slow_sde as slow_mod
    assert ss.cross_term_invariance(1.25, np.random.default_rng(0)) <= 1e-9
    real = slow_mod.slow_coefficients

    def one_sided(problem, zeta, sigma):
        b, D = real(problem, zeta, sigma)
        P = problem.tangent_projector(zeta)
        S = problem.noise_sqrt_at(zeta)
        Sig = sigma ** 2 * S @ np.swapaxes(S, -1, -2)
        Q = np.eye(problem.dim) - P
        extra = -0.5 * np.einsum("...ij,...j->...i", np.linalg.pinv(problem.hessian_at(zeta)),
                                 problem.third_contraction(zeta, P @ Sig @ Q))
        return b + extra, D
    monkeypatch.setattr(ss, "slow_coefficients", one_sided)
    assert ss.cross_term_invariance(1.25, np.random.default_rng(0)) > 1e-6


def test_trainer_backprop_verdict_fails_on_a_wrong_derivative(monkeypatch):
    """train_engine's back-propagation verdict compares the trainer's gradient with central
    differences of its own loss: a gradient off for one activation × loss pair fails it."""
    from sdeverify.experiments import train_engine as te
    from sdeverify.train import cpu
    assert te.backprop_verdict(0)[0].passed
    real = cpu.Trainer.gradients

    def tanh_off(self, W, X, y):                 # as if tanh' were 1 - a, not 1 - a^2
        G = real(self, W, X, y)
        return G * 1.05 if self.model.activation == "tanh" else G
    monkeypatch.setattr(cpu.Trainer, "gradients", tanh_off)
    assert not te.backprop_verdict(0)[0].passed


def test_noise_covariance_verdict_fails_when_noise_and_declared_covariance_differ(monkeypatch):
    """instruments' noise verdict: a problem whose declared covariance is not what its compiled
    noise applies (here: CosineWell declaring the square of its variance) fails it."""
    from sdeverify.experiments import instruments
    from sdeverify.problems import CosineWell
    assert instruments.noise_covariance_verdict(0)[0].passed
    real = CosineWell.noise_cov_at
    monkeypatch.setattr(CosineWell, "noise_cov_at", lambda self, x: real(self, x) ** 2)
    v, _ = instruments.noise_covariance_verdict(0)
    assert not v.passed and "CosineWell" in v.rule
