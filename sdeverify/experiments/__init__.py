"""One module per paper claim; :data:`EXPERIMENTS` is the registry ``sdeverify check`` runs.

Modules are imported lazily so that a missing optional piece never breaks the others.
"""
from __future__ import annotations

import importlib
from types import ModuleType

#: name -> module path, in the order ``sdeverify check`` runs them
EXPERIMENTS: dict[str, str] = {
    # self-checks of the generator and the intervals first: every later verdict relies on them
    "instruments": "sdeverify.experiments.instruments",
    "hb_equivalence": "sdeverify.experiments.hb_equivalence",
    "descent_lemma": "sdeverify.experiments.descent_lemma",
    "sgdm_descent_lemma": "sdeverify.experiments.sgdm_descent_lemma",
    "variance_reduction": "sdeverify.experiments.variance_reduction",
    "coupled_trajectory": "sdeverify.experiments.coupled_trajectory",
    "weak_approximation": "sdeverify.experiments.weak_approximation",
    "weak_worst_case": "sdeverify.experiments.weak_worst_case",
    "weak_worst_case_mc": "sdeverify.experiments.weak_worst_case_mc",
    "frozen_momentum": "sdeverify.experiments.frozen_momentum",
    "sde_limit": "sdeverify.experiments.sde_limit",
    "slow_sde": "sdeverify.experiments.slow_sde",
    "slow_sde_alpha": "sdeverify.experiments.slow_sde_alpha",
    "slow_drift_reference": "sdeverify.experiments.slow_drift_reference",
    "label_noise": "sdeverify.experiments.label_noise",
    "svag": "sdeverify.experiments.svag",
    "batch_size": "sdeverify.experiments.batch_size",
    # the paper's Sec 6 on trained networks (sdeverify.train); the trainer's arithmetic first
    "train_engine": "sdeverify.experiments.train_engine",
    "train_batch_size": "sdeverify.experiments.train_batch_size",
    "train_svag": "sdeverify.experiments.train_svag",
}


def available() -> list[str]:
    """Registered experiments whose module exists."""
    out = []
    for name, mod in EXPERIMENTS.items():
        if importlib.util.find_spec(mod) is not None:
            out.append(name)
    return out


def get(name: str) -> ModuleType:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(available())}")
    return importlib.import_module(EXPERIMENTS[name])
