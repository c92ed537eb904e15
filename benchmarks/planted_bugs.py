"""Plant realistic one-line bugs in a temporary COPY of the package and run the main job.

    python benchmarks/planted_bugs.py [--sizes smoke,quick] [--bugs ID,ID] [--source DIR]
                                      [--bugs-file PATH]

For each bug: copy ``sdeverify/`` into a work folder (never the working tree), replace one
line (the patch must match exactly once, else the bug is reported as *not applicable*), run
``python -m sdeverify.cli check --SIZE`` with ``PYTHONPATH`` pointing at the copy, and record
whether the job failed (exit status 1) and which verdicts failed.  Then the file is restored.

Each run first uses only ``instruments`` plus the checks listed in the bug's ``quick_only``
(``--only``); when that job fails, the whole job would fail too (every check has its own
seeds, so a check's verdicts do not depend on which others run), so the bug is *caught* at
that size.  Only when the subset passes is the job rerun with every check (``--full-set``
forces every check from the start).  The JSON records which set was run.

Numba's disk cache does not notice a changed *helper* of a compiled kernel defined in another
file, so bugs in files whose ``numba.njit`` functions are inlined into other files' kernels
(``COLD``) run in a fresh copy with an empty cache (about 2 minutes of compilation each);
the others share one warm copy.

This list is the one *the repository* knows about; a reviewer drawing a new set of bugs should not
reuse it (the checks are meant to have general power, not to detect these lines).
``--bugs-file PATH`` runs a list kept *outside* the repository instead: a Python file that
defines ``BUGS``, a list of ``Bug(...)`` (the name ``Bug`` is predefined in it), so that a
new set never enters this list; every JSON row then records the file and its SHA-256.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: files whose njit functions are compiled into kernels defined elsewhere
COLD = ("rng.py", "observables.py", "problems/")


@dataclass
class Bug:
    id: str
    kind: str           # the kind of blind spot it probes (a short label)
    file: str           # relative to the package folder
    old: str
    new: str
    what: str
    quick_only: tuple = ()
    count: int = 1      # which occurrence must be replaced (first by default)
    cold: bool | None = None   # None: decided by COLD and the file's njit functions
    extra: dict = field(default_factory=dict)


BUGS = [
    Bug("hb-first-step", "2 shared code", "optim.py",
        "            b[0] = 1.0\n", "            b[0] = 1.0 - tau\n",
        "HeavyBall damps the first step too (torch uses buf = g on the first step)",
        ("hb_equivalence",)),
    Bug("sgdm-no-ema", "coefficient", "optim.py",
        "        return Coefficients(beta, 1.0 - beta, lr, m0)",
        "        return Coefficients(beta, np.ones(steps), lr, m0)",
        "SGDM update m = beta m + g (heavy-ball buffer) instead of the EMA (1 - beta) g",
        ("hb_equivalence", "weak_approximation")),
    Bug("avg-lr-beta-k", "3 hidden by constant beta", "schedules.py",
        "    b_next = np.append(beta[1:], beta[-1])", "    b_next = beta.copy()",
        "averaged lr (Eq 8) reads beta_k where it needs beta_(k+1)",
        ("weak_approximation",)),
    Bug("sigma-squared", "3 hidden by sigma = 1", "simulate.py",
        "sigma=sigma, seed=seed", "sigma=sigma ** 2, seed=seed",
        "simulate passes sigma^2 to the engine as the noise scale",
        ("variance_reduction", "descent_lemma")),
    Bug("rng-var-1.01", "4 instruments", "rng.py",
        "    r = _sqrt(-2.0 * lnu)", "    r = _sqrt(-2.02 * lnu)",
        "Box-Muller radius sqrt(-2.02 ln U): normal draws with variance 1.01",
        ("variance_reduction",)),
    Bug("rng-quadrant", "4 instruments", "rng.py",
        "    b = _select(q >= _U2, -b, b)", "    b = _select(q > _U2, -b, b)",
        "Box-Muller sine branch misses the sign flip in quadrant 2 — an EQUIVALENT mutant: "
        "there the sine of a symmetric offset is symmetric, so the law of the draws is unchanged "
        "(no statistical test can or should fail)", ("variance_reduction",)),
    Bug("rng-cos-sign", "4 instruments", "rng.py",
        "    a = _select((q == _U1) | (q == _U2), -a, a)", "    a = _select(q == _U1, -a, a)",
        "Box-Muller cosine branch misses the sign flip in quadrant 2 (biased first draw)",
        ("variance_reduction",)),
    Bug("sem-sqrt2", "4 instruments", "result.py",
        "            return np.sqrt(self.var / self.count)",
        "            return np.sqrt(self.var / (2.0 * self.count))",
        "standard errors sqrt(2) too small", ("variance_reduction",)),
    Bug("one-sided-quantile", "4 instruments (wrong statistic)", "stats.py",
        "    z = z_value(level)\n    return Interval(float(mean)",
        "    z = z_value(level, tails=1)\n    return Interval(float(mean)",
        "mean_interval uses the one-sided quantile 1.645 for a two-sided 95% interval",
        ("variance_reduction",)),
    Bug("fit-weights-sd", "1 orders (wrong statistic)", "stats.py",
        "        w = 1.0 / np.maximum(rel, 1e-300) ** 2",
        "        w = 1.0 / np.maximum(rel, 1e-300)",
        "fit_order weights points by 1/sd instead of 1/variance", ("sde_limit",)),
    Bug("kinetic-no-friction", "dropped drift term", "sde.py",
        "        F = np.block([[Z, -l * I], [rho * H, -rho * I]])",
        "        F = np.block([[Z, -l * I], [rho * H, Z]])",
        "kinetic SDE moments drop the friction -rho M of dM", ("sde_limit",)),
    Bug("theory-sigma", "3 hidden by sigma = 1", "theory.py",
        "    SS = sigma ** 2 * (S @ S.T)", "    SS = sigma * (S @ S.T)",
        "exact quadratic moments use sigma instead of sigma^2", ("weak_approximation", "svag")),
    Bug("slow-drop-t1", "5 formula only in tests", "slow_sde.py",
        "    return -0.5 * t1 - 0.5 * t2, sigma * P @ S", "    return -0.5 * t2, sigma * P @ S",
        "general slow-SDE drift drops the -1/2 H^+ d2(grad L)[Sigma_par] term", ("slow_sde",)),
    Bug("slow-sigma", "5 formula only in tests", "slow_sde.py",
        "    Sig = sigma ** 2 * S @ np.swapaxes(S, -1, -2)", "    Sig = sigma * S @ np.swapaxes(S, -1, -2)",
        "general slow-SDE drift scales the noise covariance by sigma, not sigma^2", ("slow_sde",)),
    Bug("svag-r", "coefficient", "problems/base.py",
        "        s = np.sqrt(2.0 * self.svag_ell - 1.0)", "        s = np.sqrt(2.0 * self.svag_ell)",
        "SVAG coefficients r1, r2 from sqrt(2 l) instead of sqrt(2 l - 1)", ("svag",)),
    Bug("ou-sigma", "3 hidden by sigma = 1", "sde.py",
        "        return -l * H, l * (H @ c - b), (l * sigma0) ** 2 * Sig",
        "        return -l * H, l * (H @ c - b), l ** 2 * sigma0 * Sig",
        "OU (first-order SDE) exact moments scale the diffusion by sigma0, not sigma0^2",
        ("sde_limit",)),
    Bug("sphere-closed-form", "5 formula only in tests", "problems/manifolds.py",
        "        return -0.5 * sigma ** 2 * self.noise_std ** 2 * (self.dim - 1) * zeta",
        "        return -0.5 * sigma ** 2 * self.noise_std ** 2 * self.dim * zeta",
        "sphere's closed-form slow drift uses d instead of d - 1", ("slow_sde",), cold=False),
    Bug("descent-terms", "coefficient", "theory.py",
        "            0.5 * eta ** 2 * sigma ** 2 * float(np.trace(hess @ noise_cov)))",
        "            0.5 * eta ** 2 * sigma * float(np.trace(hess @ noise_cov)))",
        "descent-lemma noise term with sigma instead of sigma^2", ("descent_lemma",)),
    Bug("minibatch-index", "off-by-one", "problems/finite_sum.py",
        "        j = int(xi[b] * n)", "        j = int(xi[b] * (n - 1))",
        "minibatch index never draws the last sample", ("batch_size",)),
    Bug("warmup-off-by-one", "off-by-one", "schedules.py",
        "    out[: k.size] = lr * (k + 1) / max(w, 1)", "    out[: k.size] = lr * k / max(w, 1)",
        "linear warm-up starts at 0 instead of lr/w (one step late)", ("hb_equivalence",)),
    Bug("var-closed-form-off-by-one", "off-by-one", "theory.py",
        "(1 - beta ** (2 * (k + 1))) / (1 - beta ** 2)", "(1 - beta ** (2 * k)) / (1 - beta ** 2)",
        "update-variance closed form off by one step", ("variance_reduction",)),
    # the trainer (Sec 6 checks): each must fail a verdict of train_batch_size or train_svag
    Bug("train-aug-one-optimizer", "trainer pairing", "train/conv_reference.py",
        "        return np.tile(X, (self.J, 1, 1, 1, 1))",
        "        return np.concatenate([self.X[rows]] + [X] * (self.J - 1))",
        "augmentation not applied to the first optimizer of a launch (the others see it)",
        ("train_batch_size", "train_svag")),
    Bug("train-svag-reuse", "trainer SVAG", "train/batches.py",
        "                    out[s][i] = perm[:, pos + s * B: pos + (s + 1) * B]",
        "                    out[s][i] = perm[:, pos: pos + B]",
        "SVAG's second minibatch repeats the first", ("train_batch_size", "train_svag")),
    Bug("train-bn-backward", "trainer BatchNorm", "train/conv_cpu.py",
        "                df[base + t] = cf[t] * (n * gf[base + t] - db[t] - h * dg[t])",
        "                df[base + t] = cf[t] * (n * gf[base + t] - h * dg[t])",
        "BatchNorm's training-mode input gradient drops the mean term (-sum dy)",
        ("train_batch_size", "train_svag")),
    Bug("train-wd-twice", "trainer update", "train/conv_reference.py",
        "            g += self.decay * self.W\n",
        "            g += self.decay * self.W\n            g += self.decay * self.W\n",
        "weight decay added to the gradient twice (ResNet trainers)",
        ("train_batch_size", "train_svag")),
    # what the mechanism verdicts compute (edges, the noise control's minibatch)
    Bug("train-noise-control-unmatched", "mechanism control", "experiments/train_svag.py",
        "    big = min(setup.data.n_train, int(round(tc.noise_matched_batch(B))))",
        "    big = B",
        "the noise control trains SGD at the same minibatch instead of the noise-matched one",
        ("train_svag",)),
    Bug("train-sgdm-edge", "mechanism formula", "experiments/train_common.py",
        "    return 2.0 * (1.0 + beta) / ((1.0 - beta) * np.asarray(lr, dtype=float))",
        "    return 2.0 / ((1.0 - beta) * np.asarray(lr, dtype=float))",
        "SGDM's stability edge without its (1+beta) factor (1.9x too small): fails the SGDM-below-"
        "its-edge verdict at smoke; at quick (0.375 of the edge) its margin would hide it, "
        "tests/test_sec6_protocol.py's iterate test catches it at any size",
        ("train_batch_size",)),
    # Thm 5.5's slow drift and Thm 4.5's worst-case search (two-sided order rules)
    Bug("slow-drift-10pct", "slow drift off by 10%", "problems/manifolds.py",
        "        theta = cc * q * self.m * sigma ** 2 / 2.0\n",
        "        theta = 1.1 * cc * q * self.m * sigma ** 2 / 2.0\n",
        "the valley's closed-form slow-SDE law (Valley.ou_moments) uses a drift rate 10% too large",
        ("slow_sde",), cold=False),
    Bug("sphere-decay-d", "decay rate off by d/(d-1)", "problems/manifolds.py",
        "        return np.exp(-0.5 * (self.dim - 1) * sigma ** 2",
        "        return np.exp(-0.5 * self.dim * sigma ** 2",
        "the sphere's closed-form E<z_t, z_0> decays at rate d instead of d - 1 (x 3/2 on S^2)",
        ("slow_sde",), cold=False),
    Bug("worst-case-mc-lr", "averaged lr", "experiments/weak_worst_case_mc.py",
        '    sgdm, sgd, _, steps = pair(eta, alpha, cfg["T"])\n',
        '    sgdm, sgd, _, steps = pair(eta, alpha, cfg["T"])\n    sgd = type(sgd)(1.1 * np.asarray(sgd.lr))\n',
        "the Monte Carlo worst-case search compares SGDM with SGD at 1.1x its averaged lr",
        ("weak_worst_case_mc",)),
]


def load_bugs_file(path: str) -> tuple[list, str]:
    """``(BUGS, sha256)`` of a Python file defining ``BUGS``, a list of :class:`Bug` (the
    name ``Bug`` is predefined in the file's namespace).  ``ValueError`` for a file without
    such a list or with duplicate ids."""
    p = Path(path).resolve()
    src = p.read_text()
    ns = {"Bug": Bug, "__name__": "planted_bugs_file", "__file__": str(p)}
    exec(compile(src, str(p), "exec"), ns)
    bugs = ns.get("BUGS")
    if not isinstance(bugs, (list, tuple)) or not bugs or not all(isinstance(b, Bug) for b in bugs):
        raise ValueError(f"--bugs-file {p}: must define BUGS, a non-empty list of Bug(...)")
    ids = [b.id for b in bugs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"--bugs-file {p}: bug ids must be unique, got {ids}")
    return list(bugs), hashlib.sha256(src.encode()).hexdigest()


def _is_cold(bug: Bug, source: Path) -> bool:
    if bug.cold is not None:
        return bug.cold
    in_cold = any(bug.file == c or bug.file.startswith(c) for c in COLD)
    return in_cold and "njit" in (source / bug.file).read_text()


def _patch(path: Path, bug: Bug) -> str | None:
    text = path.read_text()
    n = text.count(bug.old)
    if n < bug.count:
        return f"patch not applicable: {bug.old!r} found {n} times in {bug.file}"
    head, sep, tail = text.partition(bug.old) if bug.count == 1 else (None, None, None)
    if bug.count != 1:
        parts = text.split(bug.old)
        text = bug.old.join(parts[:bug.count]) + bug.new + bug.old.join(parts[bug.count:])
    else:
        text = head + bug.new + tail
    path.write_text(text)
    return None


def _copy(source: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest / "sdeverify", ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))


def _run(root: Path, size: str, only, out: Path, timeout: int) -> dict:
    cmd = [sys.executable, "-m", "sdeverify.cli", "check", f"--{size}", "--out", str(out), "--quiet"]
    if only:
        cmd += ["--only", ",".join(only)]
    env = dict(os.environ, PYTHONPATH=str(root))
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        rc, tail = r.returncode, (r.stdout + r.stderr)[-2000:]
    except subprocess.TimeoutExpired:
        rc, tail = -1, "timeout"
    failed = []
    try:
        summ = json.loads((out / "summary.json").read_text())
        for c in summ["checks"]:
            if c.get("error"):
                failed.append(f"{c['name']}: ERROR {c['error'][:120]}")
            for v in c.get("verdicts", []):
                if not v["passed"]:
                    failed.append(f"{c['name']}: {v['claim']}")
    except (OSError, ValueError, KeyError):
        pass
    return {"rc": rc, "caught": rc == 1, "failed": failed, "seconds": time.perf_counter() - t0,
            "tail": tail if rc not in (0, 1) else ""}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="smoke", help="comma list of smoke, quick")
    ap.add_argument("--bugs", default=None, help="comma list of bug ids (default: all)")
    ap.add_argument("--bugs-file", default=None,
                    help="Python file outside the repository defining BUGS = [Bug(...), ...] "
                         "(used instead of this script's list)")
    ap.add_argument("--source", default=str(REPO / "sdeverify"), help="package folder to copy")
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--full-set", action="store_true", help="always run every check")
    ap.add_argument("--baseline", action="store_true", help="also run the unpatched copy")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "planted_bugs.json"))
    args = ap.parse_args(argv)
    source = Path(args.source).resolve()
    pool, origin = BUGS, None
    if args.bugs_file:
        pool, digest = load_bugs_file(args.bugs_file)
        origin = {"bugs_file": str(Path(args.bugs_file).resolve()), "bugs_file_sha256": digest}
    bugs = pool if not args.bugs else [b for b in pool if b.id in args.bugs.split(",")]
    work = Path(args.work or tempfile.mkdtemp(prefix="sdeverify-planted-"))
    work.mkdir(parents=True, exist_ok=True)
    warm = work / "warm"
    if not (warm / "sdeverify").exists():
        _copy(source, warm)
    results = []
    jobs = [("baseline", None)] if args.baseline else []
    jobs += [(b.id, b) for b in bugs]
    for size in args.sizes.split(","):
        for name, bug in jobs:
            only = None
            if bug is not None and not args.full_set:
                only = ("instruments",) + tuple(bug.quick_only)
            root = warm
            if bug is not None and _is_cold(bug, source):
                root = work / f"cold-{bug.id}"
                _copy(source, root)
            target = None if bug is None else root / "sdeverify" / bug.file
            problem = None
            if target is not None:
                shutil.copy2(source / bug.file, target)
                problem = _patch(target, bug)
            if problem:
                res = {"rc": None, "caught": None, "failed": [], "seconds": 0.0, "tail": problem}
            else:
                res = _run(root, size, only, work / f"out-{name}-{size}", args.timeout)
                if only and res["caught"] is False:        # subset passed: run every check
                    only = None
                    res = _run(root, size, None, work / f"out-{name}-{size}-all", args.timeout)
            if target is not None:
                shutil.copy2(source / bug.file, target)
            if root != warm:
                shutil.rmtree(root, ignore_errors=True)
            row = {"bug": name, "size": size, "only": list(only) if only else None,
                   "kind": bug.kind if bug else "-", "file": bug.file if bug else "-",
                   "what": bug.what if bug else "unpatched", **res, **(origin or {})}
            results.append(row)
            status = {True: "CAUGHT", False: "missed", None: "n/a"}[res["caught"]]
            print(f"{size:5s} {name:28s} {status:7s} {res['seconds']:6.0f} s  "
                  f"{'; '.join(res['failed'][:3])[:160]} {res['tail'][-200:] if res['tail'] else ''}",
                  flush=True)
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results, indent=1))
    for size in args.sizes.split(","):
        rows = [r for r in results if r["size"] == size and r["bug"] != "baseline" and r["caught"] is not None]
        if rows:
            print(f"{size}: caught {sum(r['caught'] for r in rows)}/{len(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
