"""A finished (or interrupted) ``sdeverify check`` run, read back from its output folder.

``sdeverify check --out DIR`` writes, per check, ``NAME.json`` + ``NAME.<hash>.npz`` (its
data and verdicts, :class:`~sdeverify.experiments.base.ExperimentResult`) and ``NAME.png``,
and ``summary.json`` (size, seed, the checks in order, errors, whether the run completed).
:func:`load_check` reads all of it back, checking every result file as it goes (a JSON
whose arrays file is missing or does not match is an error, never a silent gap).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .experiments.base import ExperimentResult
from .verdict import Value, Verdict, describe, kind_of

if TYPE_CHECKING:  # optional extras, imported lazily by to_dataframe / to_xarray
    import pandas
    import xarray

__all__ = ["CheckRun", "load_check"]

NOT_RESULTS = {"summary", "simulation"}


@dataclass(frozen=True)
class CheckRun:
    """The results of one ``sdeverify check`` output folder.

    Attributes
    ----------
    folder : where it was read from.
    results : check name → :class:`ExperimentResult` (data arrays, verdicts, metadata), in
        the order the checks ran.
    errors : check name → the error message of a check that crashed.
    summary : the content of ``summary.json`` (empty if the folder has none).
    """
    folder: Path
    results: dict
    errors: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Every verdict of every check passed, no check crashed and the verdict-machinery
        canary (``summary.json``'s ``"canary"``, :mod:`sdeverify.canary`) did not fail."""
        return (not self.errors and all(r.passed for r in self.results.values())
                and self.canary_passed)

    @property
    def canary_passed(self) -> bool:
        """The run's verdict-machinery canary passed (True for runs saved before it existed)."""
        return bool(self.summary.get("canary", {}).get("passed", True))

    @property
    def complete(self) -> bool:
        """``summary.json`` says the run finished (False for an interrupted run)."""
        return bool(self.summary.get("complete", False))

    def verdict_rows(self) -> list[dict]:
        """One dict per verdict: check, claim, reference, prediction, kind (confidence
        interval / error estimate / value), estimate, low, high, level, threshold, measured
        (as printed), passed, rule — plus one row per crashed check."""
        rows = []
        for name, res in self.results.items():
            for v in res.verdicts:
                rows.append(_row(name, v))
        for name, err in self.errors.items():
            rows.append({"check": name, "claim": "(the check crashed)", "reference": "",
                         "prediction": "", "kind": "error", "estimate": float("nan"),
                         "low": float("nan"), "high": float("nan"), "level": float("nan"),
                         "threshold": None, "measured": err, "passed": False, "rule": err})
        return rows

    def to_dataframe(self) -> "pandas.DataFrame":
        """The verdicts as a :class:`pandas.DataFrame` (columns of :meth:`verdict_rows`).
        Needs pandas (``pip install 'sdeverify[analysis]'``)."""
        from .tables import optional
        pd = optional("pandas")
        cols = ["check", "claim", "reference", "prediction", "kind", "estimate", "low", "high",
                "level", "threshold", "measured", "passed", "rule"]
        return pd.DataFrame(self.verdict_rows(), columns=cols)

    def checks_frame(self) -> "pandas.DataFrame":
        """One row per check: name, passed, number of verdicts and of failed ones, wall time
        (s), size, seed.  Needs pandas."""
        from .tables import optional
        pd = optional("pandas")
        rows = [{"check": n, "passed": r.passed, "verdicts": len(r.verdicts),
                 "failed": sum(not v.passed for v in r.verdicts),
                 "wall_time": r.meta.get("wall_time"), "size": r.meta.get("size"),
                 "seed": r.meta.get("seed")} for n, r in self.results.items()]
        rows += [{"check": n, "passed": False, "verdicts": 0, "failed": 0, "wall_time": None,
                  "size": self.summary.get("size"), "seed": self.summary.get("seed")}
                 for n in self.errors]
        return pd.DataFrame(rows)

    def to_xarray(self, name: str) -> "xarray.Dataset":
        """The data arrays of check ``name`` as an :class:`xarray.Dataset` (dimensions named
        ``<array>_dim<i>``; parameters and metadata as attributes).  Needs xarray."""
        from .tables import attrs_of, optional
        xr = optional("xarray")
        res = self._result(name)
        data = {k: ([f"{k}_dim{i}" for i in range(v.ndim)], v) for k, v in res.data.items()}
        return xr.Dataset(data, attrs=attrs_of({**res.params, **res.meta}))

    def _result(self, name: str) -> ExperimentResult:
        if name not in self.results:
            raise KeyError(f"no result of check {name!r} in {self.folder}; "
                           f"available: {sorted(self.results)}")
        return self.results[name]


def _row(check: str, v: Verdict) -> dict:
    m = v.measured
    if isinstance(m, Value):
        est = m.value if not isinstance(m.value, tuple) else float("nan")
        low = high = level = float("nan")
    else:
        est, low, high, level = m.estimate, m.low, m.high, m.level
    return {"check": check, "claim": v.claim, "reference": v.reference,
            "prediction": v.prediction, "kind": kind_of(m), "estimate": est, "low": low,
            "high": high, "level": level, "threshold": v.threshold, "measured": describe(v),
            "passed": v.passed, "rule": v.rule}


def result_names(folder: Path) -> list[str]:
    """Names of the check results in ``folder``: those listed by ``summary.json`` in its
    order, then any other ``NAME.json`` that is an experiment result."""
    names: list[str] = []
    summary = folder / "summary.json"
    if summary.exists():
        names = [c["name"] for c in json.loads(summary.read_text())["checks"]]
    for p in sorted(folder.glob("*.json")):
        if p.stem not in names and p.stem not in NOT_RESULTS:
            try:
                doc = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(doc, dict) and "verdicts" in doc and "data_keys" in doc:
                names.append(p.stem)
    return names


def load_check(folder: str | Path) -> CheckRun:
    """Read an ``sdeverify check --out`` folder back: every check's result (verified: the
    arrays file must match its JSON), the errors of crashed checks and ``summary.json``.

    Raises ``FileNotFoundError`` if the folder holds no check result, and
    :class:`~sdeverify.result.ResultFileError` if a result's files do not belong together.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    summary = {}
    if (folder / "summary.json").exists():
        summary = json.loads((folder / "summary.json").read_text())
    errors = {c["name"]: c["error"] for c in summary.get("checks", []) if c.get("error")}
    results = {}
    for name in result_names(folder):
        if name in errors or not (folder / f"{name}.json").exists():
            continue
        results[name] = ExperimentResult.load(folder, name)
    if not results and not errors:
        raise FileNotFoundError(f"{folder} holds no sdeverify check results "
                                "(NAME.json files written by `sdeverify check --out`)")
    return CheckRun(folder, results, errors, summary)
