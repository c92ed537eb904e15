"""The O(1/η²) horizon (Sec. 5, Thm. 5.5): engine throughput, and the full-size slow_sde and
label_noise experiments with their figures.

    python benchmarks/slow_sde.py                      # full size -> figures/slow_sde.png,
                                                       #              figures/label_noise.png
    python benchmarks/slow_sde.py --size quick --figures /tmp/figs
    python benchmarks/slow_sde.py --only throughput    # just the engine timing
    python benchmarks/slow_sde.py --out results/       # also save the results (JSON + NPZ)

Throughput: 10⁴ paths × 40 000 steps (η = 0.005, t = 1) of SGD, SGDM(β = 0.9) and
SGDM(α = 0.5) together (common random numbers) on the valley and the sphere, plus the
coupled Euler scheme of the slow SDE; prints wall times and ns per (path · step · optimizer).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sdeverify as sv  # noqa: E402
from sdeverify.experiments import label_noise, slow_sde  # noqa: E402
from sdeverify.problems import DiagonalNet, Sphere, Valley  # noqa: E402
from sdeverify.slow_sde import coupled_slow_sde  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, numba threads {sv_threads()}"


def sv_threads() -> int:
    import numba
    return numba.get_num_threads()


def throughput(paths: int = 10240, eta: float = 0.005, t: float = 1.0) -> None:
    steps = int(round(t / eta ** 2))
    print(f"\n== engine throughput: {paths} paths x {steps} steps (eta={eta}, t={t}), "
          f"3 optimizers with common random numbers ==")
    cases = [("valley", Valley.label_noise_like(c=2.0, sx2=0.25), np.array([1.0, 0.0])),
             ("sphere d=3", Sphere(3), np.array([1.0, 0.0, 0.0]))]
    dn = DiagonalNet.generate(5, 10, 2, seed=0)
    cases.append(("diagonal net 2D=20", dn, dn.project(np.ones(dn.dim))))
    for name, prob, x0 in cases:
        opts = [sv.SGD(eta), sv.SGDM(eta, 0.9), sv.SGDM(eta, 1 - 0.3 * eta ** 0.5)]
        t0 = time.perf_counter()
        sv.simulate(prob, opts, x0, steps=10, paths=256, sigma=1.0, seed=0)   # compile / load
        t_compile = time.perf_counter() - t0
        n = paths if name != "diagonal net 2D=20" else paths // 10
        t0 = time.perf_counter()
        sv.simulate(prob, opts, x0, steps=steps, paths=n, sigma=1.0, seed=0, record=[0, steps],
                    store_states=True)
        wall = time.perf_counter() - t0
        line = (f"{name:>20}: {n} paths: {wall:7.1f} s  ({1e9 * wall / (n * steps * 3):5.1f} ns per "
                f"path-step-optimizer; first call {t_compile:.1f} s)")
        if getattr(prob, "slow_step", None) is not None:
            coupled_slow_sde(prob, x0, eta=eta, steps=10, paths=64, sigma=1.0)
            t0 = time.perf_counter()
            coupled_slow_sde(prob, x0, eta=eta, steps=steps, paths=n, sigma=1.0)
            wc = time.perf_counter() - t0
            line += f"; coupled slow-SDE Euler {wc:.1f} s"
        print(line, flush=True)


def _fmt(o) -> str:
    o = np.asarray(o, dtype=float)
    return "      --      " if not np.isfinite(o[0]) else f"{o[0]:.3f} [{o[1]:.3f}, {o[2]:.3f}]"


def report_slow_sde(res) -> None:
    d = res.data
    for p in d["problems"]:
        p = str(p)
        etas, fits, poly = d[f"{p}_etas"], d[f"{p}_fits"], d[f"{p}_poly"]
        wall = d[f"{p}_wall"]
        print(f"\n-- {p}: etas {list(np.round(etas, 4))}; simulate wall {np.round(wall[:, 0], 1)} s, "
              f"coupled Euler {np.round(wall[:, 1], 1)} s")
        for h, lab in enumerate(slow_sde.TEST_LABELS[p]):
            for j, opt in enumerate(slow_sde.OPT_LABELS):
                b, s = d[f"{p}_bias"][j, :, h, -1], d[f"{p}_bias_sem"][j, :, h, -1]
                print(f"   E {lab:>9} t=T {opt:>11} - slow SDE: order {_fmt(fits[j, h, 0])};"
                      f"  a*eta + b*eta^2: a={_fmt(poly[j, h, 0])}, b={_fmt(poly[j, h, 1])}")
                print("        errors ± 1.96 sem: " + ", ".join(f"{x:+.2e}±{1.96 * y:.1e}" for x, y in zip(b, s)))
                if j:
                    m, s = d[f"{p}_diff"][j, :, h, -1], d[f"{p}_diff_sem"][j, :, h, -1]
                    print(f"   E {lab:>9} t=T {opt:>11} - SGD:      order {_fmt(fits[j, h, 1])}")
                    print("        diffs ± 1.96 sem:  " + ", ".join(f"{x:+.2e}±{1.96 * y:.1e}" for x, y in zip(m, s)))
        w1c, wf, ks = d[f"{p}_w1c"], d[f"{p}_w1c_fits"], d[f"{p}_ks"]
        for j, opt in enumerate(slow_sde.OPT_LABELS):
            print(f"   W1 {opt:>11} vs coupled slow SDE: order {_fmt(wf[j])}; at eta_min "
                  f"{w1c[j, -1, 0]:.2e} [{w1c[j, -1, 1]:.2e}, {w1c[j, -1, 2]:.2e}]; KS p at eta_min "
                  f"{ks[j, -1, 1]:.3g} (eta_max {ks[j, 0, 1]:.2g})")


def report_label_noise(res) -> None:
    d = res.data
    print(f"\n-- label noise: etas {list(d['etas'])}; simulate wall {np.round(d['wall'], 1)} s")
    print(f"   slow flow: sharpness {d['S_ode'][0]:.2f} -> {d['S_ode'][-1]:.3f}; off-support mass "
          f"{d['off_ode'][0]:.3f} -> {d['off_ode'][-1]:.3f}")
    for j, opt in enumerate(label_noise.OPT_LABELS):
        print(f"   {opt:>11}: order of max_t|E S - S_slow| {_fmt(d['fits'][j])}; errors "
              + ", ".join(f"{x:.3g}" for x in d["err_max"][j]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="full", choices=("smoke", "quick", "full"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figures", default=str(ROOT / "figures"))
    ap.add_argument("--out", default=None, help="folder for the results (JSON + NPZ)")
    ap.add_argument("--only", default=None, choices=("throughput", "slow_sde", "label_noise"))
    a = ap.parse_args(argv)
    print(f"machine: {machine()}")
    figs = Path(a.figures)
    figs.mkdir(parents=True, exist_ok=True)
    ok = True
    if a.only in (None, "throughput"):
        throughput()
    for mod, rep in ((slow_sde, report_slow_sde), (label_noise, report_label_noise)):
        if a.only not in (None, mod.NAME):
            continue
        print(f"\n== {mod.NAME} ({a.size}) ==", flush=True)
        res = mod.run(size=a.size, seed=a.seed,
                      progress=lambda i, n: print(f"   {i}/{n}", end="\r", flush=True))
        rep(res)
        for v in res.verdicts:
            print(f"   [{'PASS' if v.passed else 'FAIL'}] {v.claim}: {v.measured}  ({v.rule})")
            ok &= v.passed
        print(f"   wall time {res.meta['wall_time']:.1f} s")
        png = mod.plot(res, figs / f"{mod.NAME}.png")
        print(f"   figure: {png}")
        if a.out:
            print(f"   saved: {res.save(a.out)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
