"""A finished (or interrupted) ``sdeverify check`` run, read back from its output folder.

``sdeverify check --out DIR`` writes, per check, ``NAME.json`` + ``NAME.<hash>.npz`` (its
data and verdicts, :class:`~sdeverify.experiments.base.ExperimentResult`) and ``NAME.png``,
and ``summary.json`` (size, seed, the checks in order, errors, whether the run completed).
Every JSON carries the hash of its own content (:mod:`sdeverify.files`).  :func:`load_check`
reads all of it back, checking every file as it goes: a ``summary.json`` that is altered,
unparsable or malformed is an error naming it; a check it lists whose result is missing,
altered, unreadable or from another run is kept in :attr:`CheckRun.problems` — listed by
the report, and the run reads as failed — never a silent gap.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .experiments.base import ExperimentResult
from .files import ResultFileError, read_json
from .verdict import Value, Verdict, describe, kind_of

if TYPE_CHECKING:  # optional extras, imported lazily by to_dataframe / to_xarray
    import pandas
    import xarray

__all__ = ["CheckRun", "load_check", "read_summary"]

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
    problems : check name → why a check that ``summary.json`` lists has no trustworthy
        result (missing, altered, unreadable, or from another run).
    """
    folder: Path
    results: dict
    errors: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    problems: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        """One line: the folder, the checks, the verdict counts and the outcome (not the data)."""
        n = sum(len(r.verdicts) for r in self.results.values())
        bad = sum(not v.passed for r in self.results.values() for v in r.verdicts)
        extra = "".join(f", {len(d)} {what}" for what, d in (("crashed", self.errors),
                                                              ("missing or altered", self.problems))
                        if d)
        return (f"CheckRun({str(self.folder)!r}: {len(self.results)} checks, {n} verdicts, "
                f"{bad} failed{extra}, {'PASS' if self.passed else 'FAIL'})")

    @property
    def passed(self) -> bool:
        """Every verdict of every check passed, no check crashed, every check that
        ``summary.json`` lists has its intact result, and the verdict-machinery canary
        (``summary.json``'s ``"canary"``, :mod:`sdeverify.canary`) did not fail."""
        return (not self.errors and not self.problems
                and all(r.passed for r in self.results.values()) and self.canary_passed)

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
            rows.append(_failed_row(name, "(the check crashed)", err))
        for name, why in self.problems.items():
            rows.append(_failed_row(name, "(no trustworthy result)", why))
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
                 for n in list(self.errors) + list(self.problems)]
        return pd.DataFrame(rows)

    def to_xarray(self, name: str, dims: dict | None = None) -> "xarray.Dataset":
        """The data arrays of check ``name`` as a labelled :class:`xarray.Dataset`, the
        check's parameters and metadata as attributes.  Needs xarray.

        Dimensions get real coordinates (:func:`labelled_dims`): a list among the check's
        parameters (``etas``, ``ells``, ``optimizers``) or a 1-D increasing data array with
        a plural name (``times``) labels every axis of its length — as the dimension
        ``eta``, ``ell``, ``optimizer``, ``time`` — unless two such lists share that length
        (then nothing can tell them apart).  Axes left without a meaning are named
        ``<array>_dim<i>``.  ``dims`` (array name → dimension names, with the coordinate
        values given as data or parameters of those names, or none) overrides the rule for
        the arrays it names, as does a check's own ``meta["data_dims"]`` (same form) where
        its experiment records one."""
        from .tables import attrs_of, optional
        xr = optional("xarray")
        res = self._result(name)
        declared = res.meta.get("data_dims")
        given = {**(declared if isinstance(declared, dict) else {}), **(dims or {})}
        names, coords = labelled_dims(res.data, res.params, given)
        data = {k: (names[k], v) for k, v in res.data.items() if k not in coords}
        return xr.Dataset(data, coords={d: (d, c) for d, c in coords.items()},
                          attrs=attrs_of({**res.params, **res.meta}))

    def _result(self, name: str) -> ExperimentResult:
        if name not in self.results:
            raise KeyError(f"no result of check {name!r} in {self.folder}; "
                           f"available: {sorted(self.results)}")
        return self.results[name]


def _singular(name: str) -> str:
    """``etas`` → ``eta``, ``times`` → ``time``, ``optimizers`` → ``optimizer``."""
    return name[:-1] if len(name) > 3 and name.endswith("s") and not name.endswith("ss") else name


def _coordinate_candidates(data: dict, params: dict) -> dict:
    """Dimension name → (source name, values) of every list that can label an axis: a
    parameter that is a list of ≥ 2 distinct numbers or strings (the data array of the same
    name, if any, gives its values), and a 1-D strictly increasing data array whose name is
    plural."""
    out = {}
    for k, v in params.items():
        if isinstance(v, (list, tuple)) and len(v) >= 2 \
                and all(isinstance(x, (int, float, str)) and not isinstance(x, bool) for x in v) \
                and len(set(v)) == len(v):
            vals = np.asarray(data.get(k, v))
            if vals.ndim == 1 and vals.size == len(v):
                out[_dim_name(k, data)] = (k, vals)
    for k, v in data.items():
        a = np.asarray(v)
        if (k not in params and a.ndim == 1 and a.size >= 2 and a.dtype.kind in "iuf"
                and k.isidentifier() and k.endswith("s") and np.all(np.diff(a) > 0)):
            out.setdefault(_dim_name(k, data), (k, a))
    return out


def _dim_name(source: str, data: dict) -> str:
    """The dimension a list named ``source`` labels: its singular, unless a data array
    already has that name (then ``source`` itself)."""
    d = _singular(source)
    return source if d != source and d in data else d


def labelled_dims(data: dict, params: dict, dims: dict | None = None
                  ) -> tuple[dict, dict]:
    """(array name → dimension names, dimension → coordinate values) for a check's data:
    the rule of :meth:`CheckRun.to_xarray`.  Every data array keeps its name; one that
    gives a coordinate's values (``etas``) lies along that coordinate (``eta``), or is that
    coordinate when the two names are one (``ks``)."""
    cands = _coordinate_candidates(data, params)
    by_length: dict[int, list[str]] = {}
    for d, (_, vals) in cands.items():
        by_length.setdefault(len(vals), []).append(d)
    unique = {n: ds[0] for n, ds in by_length.items() if len(ds) == 1}
    coords = {d: vals for d, (_, vals) in cands.items() if len(by_length[len(vals)]) == 1}
    sources = {cands[d][0]: d for d in coords}
    names: dict[str, list[str]] = {}
    for k, v in data.items():
        a = np.asarray(v)
        if k in sources and a.ndim == 1:
            names[k] = [sources[k]]
            continue
        used, out = set(), []
        for i, n in enumerate(a.shape):
            d = unique.get(n)
            if d is None or d in used:
                d = f"{k}_dim{i}"
            used.add(d)
            out.append(d)
        names[k] = out
    for k, given in (dims or {}).items():
        if k not in data:
            raise ValueError(f"dims names the array {k!r}, which check data does not hold; "
                             f"arrays: {sorted(data)}")
        a = np.asarray(data[k])
        if len(given) != a.ndim:
            raise ValueError(f"dims[{k!r}] has {len(given)} names for an array of {a.ndim} "
                             f"dimensions (shape {a.shape})")
        names[k] = list(given)
        for i, d in enumerate(given):
            src = data.get(d, params.get(d))
            if src is not None and np.ndim(src) == 1 and len(src) == a.shape[i]:
                coords[d] = np.asarray(src)
            elif d in coords and len(coords[d]) != a.shape[i]:
                del coords[d]
    used_dims = {d for ds in names.values() for d in ds}
    return names, {d: c for d, c in coords.items() if d in used_dims}


def _failed_row(check: str, claim: str, why: str) -> dict:
    return {"check": check, "claim": claim, "reference": "", "prediction": "", "kind": "error",
            "estimate": float("nan"), "low": float("nan"), "high": float("nan"),
            "level": float("nan"), "threshold": None, "measured": why, "passed": False,
            "rule": why}


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


def read_summary(path: str | Path) -> dict:
    """The content of a ``summary.json`` (written by :func:`sdeverify.runner.write_summary`),
    checked: its content hash, and its form (an object whose ``"checks"`` is a list of
    objects with a ``"name"``); :class:`~sdeverify.files.ResultFileError` naming the file
    otherwise."""
    doc = read_json(path)
    checks = doc.get("checks")
    if not isinstance(checks, list) or not all(
            isinstance(c, dict) and isinstance(c.get("name"), str) and c["name"] for c in checks):
        raise ResultFileError(f"{path}: 'checks' must be a list of objects with a 'name' "
                              f"(got {checks!r:.80})")
    names = [c["name"] for c in checks]
    if len(set(names)) != len(names):
        raise ResultFileError(f"{path}: lists a check twice ({names})")
    return doc


def result_names(folder: Path, summary: dict | None = None) -> list[str]:
    """Names of the check results in ``folder``: those listed by its summary (``summary``,
    or read from ``summary.json``) in its order, then any other ``NAME.json`` that is an
    experiment result."""
    if summary is None:
        summary = read_summary(folder / "summary.json") if (folder / "summary.json").exists() else {}
    names = [c["name"] for c in summary.get("checks", [])]
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
    JSON's content hash, the arrays file's hash), the errors of crashed checks and
    ``summary.json``.

    Raises ``FileNotFoundError`` if the folder holds no check result, and
    :class:`~sdeverify.files.ResultFileError` (naming the file) if ``summary.json`` is
    altered, unparsable or malformed.  A check that ``summary.json`` lists but whose result
    is missing, altered, unreadable or of another size or seed is listed in
    :attr:`CheckRun.problems` (the run then reads as failed).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    summary = {}
    if (folder / "summary.json").exists():
        summary = read_summary(folder / "summary.json")
    listed = {c["name"]: c for c in summary.get("checks", [])}
    errors = {n: str(c["error"]) for n, c in listed.items() if c.get("error")}
    results, problems = {}, {}
    for name in result_names(folder, summary):
        if name in errors:
            continue
        if not (folder / f"{name}.json").exists():
            problems[name] = f"missing: summary.json lists it, but {name}.json is not in {folder}"
            continue
        try:
            res = ExperimentResult.load(folder, name)
        except ResultFileError as exc:
            problems[name] = f"altered or unreadable: {exc}"
            continue
        except (KeyError, TypeError, ValueError) as exc:
            problems[name] = (f"unreadable: {folder / (name + '.json')} is not a complete check "
                              f"result ({type(exc).__name__}: {exc})")
            continue
        other = _other_run(res, summary, listed.get(name))
        if other:
            problems[name] = f"from another run: {other}"
            continue
        results[name] = res
    if not results and not errors and not problems:
        raise FileNotFoundError(f"{folder} holds no sdeverify check results "
                                "(NAME.json files written by `sdeverify check --out`)")
    return CheckRun(folder, results, errors, summary, problems)


def _other_run(res: ExperimentResult, summary: dict, entry: dict | None) -> str:
    """Why ``res`` is not the result that ``summary.json`` (and its entry) describe, or ""."""
    if entry is None:
        return ""
    for key in ("size", "seed"):
        if key in summary and res.meta.get(key) != summary[key]:
            return f"its {key} is {res.meta.get(key)!r}, summary.json's is {summary[key]!r}"
    if "passed" in entry and bool(entry["passed"]) != res.passed:
        return (f"summary.json records passed={entry['passed']}, its verdicts say "
                f"passed={res.passed}")
    return ""
