"""The engine contract: the backend registry, the typed engine output, the optimizer-scheme
protocol, and the kernel disk cache (:mod:`sdeverify.engine.cache`) on its own.

Compile cost: the CPU runs reuse the kernel of ``tests/test_engine.py`` (CosineWell(2),
float64); the cache tests compile three one-line functions.
"""
import dataclasses

import numba
import numpy as np
import pytest

import sdeverify as sv
from sdeverify import engine
from sdeverify.engine import EngineContractError, EngineOutput, cache
from sdeverify.engine.spec import make_spec
from sdeverify.optim import Coefficients, OptimizerScheme
from sdeverify.problems import CosineWell
from sdeverify.sde import Embedded

OPTS = [sv.SGD(0.05), sv.SGDM(0.05, 0.9)]


def _sim(backend, paths=70, steps=12, **kw):
    return sv.simulate(CosineWell(2), kw.pop("opts", OPTS), np.full(2, 0.5), steps=steps,
                       paths=paths, sigma=1.0, seed=3, observables=["loss", "sqnorm", "x0"],
                       backend=backend, **kw)


def _same(a, b):
    return all(np.array_equal(getattr(a, k), getattr(b, k), equal_nan=True)
               for k in ("block_stats", "block_diff", "block_bad", "x_final", "m_final", "div_step"))


# ---- registry --------------------------------------------------------------------------------
def test_registry_lists_the_builtin_backends_and_names_them_in_errors():
    assert engine.backends()[:3] == ("cpu", "numpy", "cuda")
    assert engine.get_backend("cpu").dtypes == ("float64", "float32")
    with pytest.raises(ValueError, match=r"backend must be one of \('cpu', 'numpy', 'cuda'"):
        engine.get_backend("gpu")
    with pytest.raises(ValueError, match="already registered"):
        engine.register_backend("cpu", lambda: None)
    with pytest.raises(ValueError, match="dtypes"):
        engine.register_backend("half", lambda: None, dtypes=("float16",))


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so that test backends do not leak."""
    monkeypatch.setattr(engine, "_REGISTRY", dict(engine._REGISTRY))
    monkeypatch.setattr(engine, "_ENGINES", {})
    return engine


def test_a_registered_backend_runs_through_simulate(registry):
    from sdeverify.engine import reference
    calls = []

    class Wrapped:
        def run(self, spec):
            calls.append(spec.paths)
            return reference.run(spec)

    registry.register_backend("wrapped", Wrapped, numerics="cpu/numpy (bitwise twins)")
    assert "wrapped" in registry.backends()
    res = _sim("wrapped")
    assert calls == [70] and res.meta["backend"] == "wrapped"
    assert _same(res, _sim("numpy"))
    with pytest.raises(ValueError, match="supported by backend='cpu' only"):
        _sim("wrapped", dtype="float32")


def test_a_backend_that_breaks_the_output_contract_is_named(registry):
    from sdeverify.engine import reference

    class Truncating:
        def run(self, spec):
            out = reference.run(spec)
            return dataclasses.replace(out, x_final=out.x_final[:, :-1])

    registry.register_backend("truncating", Truncating)
    with pytest.raises(EngineContractError, match=r"'truncating' returned x_final"):
        _sim("truncating")


@pytest.mark.parametrize("name", engine.backends())
def test_every_registered_backend_agrees_with_the_reference(name):
    """Each backend of the registry (a new one is picked up here) returns an EngineOutput for
    a small CosineWell run, bitwise equal to the NumPy reference where its ``numerics``
    label is the reference's, to 1e-10 relative otherwise (e.g. FMA contraction)."""
    backend = engine.get_backend(name)
    try:
        backend.require()
    except Exception as exc:                  # e.g. no GPU here
        pytest.skip(f"backend {name!r} cannot run here: {exc}")
    spec = make_spec(CosineWell(2), OPTS, np.full(2, 0.5), steps=12, paths=70, sigma=1.0, seed=3,
                     observables=["loss", "sqnorm", "x0"])
    out, ref = backend.run(spec), engine.get_backend("numpy").run(spec)
    assert type(out) is EngineOutput
    if backend.numerics == engine.get_backend("numpy").numerics:
        assert _same(out, ref)
    else:
        assert np.array_equal(out.div_step, ref.div_step)
        assert np.array_equal(out.block_stats[..., 0], ref.block_stats[..., 0])
        for k in ("block_stats", "x_final", "m_final"):
            assert np.allclose(getattr(out, k), getattr(ref, k), rtol=1e-10, atol=1e-12), k


# ---- typed output ------------------------------------------------------------------------------
def test_engine_output_is_frozen_and_shaped_by_the_spec():
    spec = make_spec(CosineWell(2), OPTS, np.full(2, 0.5), steps=10, paths=300, sigma=1.0,
                     record=[0, 5, 10], store_states=True, dtype="float32")
    out = EngineOutput.allocate(spec)
    assert out.block_stats.shape == (2, 2, 3, 2, 3) and out.block_bad.shape == (2, 2, 3, 2, 2)
    assert out.x_final.dtype == np.float32 and out.states.shape == (2, 3, 300, 2)
    assert out.div_step.dtype == np.int64
    assert out.check(spec) is out
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.x_final = out.m_final
    bad = dataclasses.replace(out, m_final=np.zeros(out.m_final.shape))
    with pytest.raises(EngineContractError, match=r"m_final as float64\[2, 300, 2\].*float32"):
        bad.check(spec, "test")


# ---- optimizer schemes --------------------------------------------------------------------------
class Plain:
    """A scheme written from scratch: SGD's coefficients, no name."""

    def coefficients(self, steps, dim):
        return Coefficients(np.zeros(steps), np.ones(steps), np.full(steps, 0.05), np.zeros(dim))


def test_builtin_optimizers_satisfy_the_protocol():
    for opt in (sv.SGD(0.1), sv.SGDM(0.1, 0.9), sv.HeavyBall(0.1, 0.9), Embedded(sv.SGD(0.1), 2),
                Plain()):
        assert isinstance(opt, OptimizerScheme)
    assert not isinstance(object(), OptimizerScheme)


def test_a_custom_scheme_runs_and_is_named_by_its_class():
    res = _sim("numpy", opts=[Plain(), sv.SGD(0.05)])
    assert res.optimizers == ("Plain", "SGD")
    assert np.array_equal(res.x_final[0], res.x_final[1])


class Short(Plain):
    def coefficients(self, steps, dim):
        c = super().coefficients(steps, dim)
        return dataclasses.replace(c, gamma=c.gamma[:-1])


class Untyped(Plain):
    def coefficients(self, steps, dim):
        c = super().coefficients(steps, dim)
        return (c.a, c.b, c.gamma, c.m0)


@pytest.mark.parametrize("opt, message", [
    (object(), "has no coefficients method"),
    (Short(), r"optimizer 'Short': coefficients\(12, 2\)\.gamma must be a real array of shape \(12,\)"),
    (Untyped(), "must return sdeverify.optim.Coefficients, got tuple"),
])
def test_what_is_not_a_scheme_is_named(opt, message):
    with pytest.raises(ValueError, match=message):
        _sim("numpy", opts=[opt])


# ---- the kernel disk cache ---------------------------------------------------------------------
def _problem_function(factor: float):
    """``f(x) = factor * x``, defined in the same module under the same name every time, as
    an edited problem function is in a new process."""
    ns = {"__name__": "edited_problem_module"}
    exec(f"def f(x):\n    return x * {factor!r}\n", ns)
    return numba.njit(ns["f"])


def _kernel_for(f, key=None):
    """A kernel built like the CPU engine's: a closure over an inlined problem function,
    with :class:`~sdeverify.engine.cache.KernelCache` under a key of fingerprints.  Unlike
    the engine's, its name does not carry the key (``unique_names``), so every problem's
    kernel shares one cache file and only the index key tells the entries apart."""
    key = cache.fingerprint(f) if key is None else key
    f_ = numba.njit(inline="always")(f.py_func)

    def kernel(x):
        return f_(x) + 1.0

    disp = numba.njit(kernel)
    cache.enable_disk_cache(disp, key)
    assert isinstance(disp._cache, cache.KernelCache)
    return disp


def _hit(disp) -> bool:
    return sum(disp.stats.cache_hits.values()) > 0


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path))
    return tmp_path


def test_fingerprint_follows_the_function_body_not_its_identity():
    a, b, c = _problem_function(2.0), _problem_function(2.0), _problem_function(3.0)
    assert cache.fingerprint(a) == cache.fingerprint(b) != cache.fingerprint(c)
    assert cache.fingerprint(a).startswith("edited_problem_module.f:")


def test_fingerprint_tells_a_compiled_function_from_its_plain_python():
    """A step function whose ``numba.njit`` decorator was lost has the same code as before:
    its fingerprint must still differ, or the kernel cached with the compiled version is
    loaded and the loss shows only on a cold cache (``valley_slow_step_lanes`` lost its
    decorator once; the warm development cache hid it, a fresh clone's main job failed)."""
    f = _problem_function(2.0)
    assert cache.fingerprint(f) != cache.fingerprint(f.py_func)
    assert ":jit:" in cache.fingerprint(f) and ":py:" in cache.fingerprint(f.py_func)


def test_kernel_cache_hits_for_the_same_problem_and_misses_for_another(cache_dir):
    two, three = _problem_function(2.0), _problem_function(3.0)
    first = _kernel_for(two)
    assert first(1.0) == 3.0 and not _hit(first)
    again = _kernel_for(_problem_function(2.0))          # "a new process": a new dispatcher
    assert again(1.0) == 3.0 and _hit(again)
    other = _kernel_for(three)                          # edited body: its own entry
    assert other(1.0) == 4.0 and not _hit(other)
    assert _kernel_for(three)(1.0) == 4.0


def test_kernel_cache_would_be_stale_without_the_function_fingerprint(cache_dir):
    """Negative control: under a key that ignores the function's body, the edited function
    gets the old compiled code — what the fingerprint in the key prevents."""
    stale_key = "edited_problem_module.f"
    assert _kernel_for(_problem_function(2.0), stale_key)(1.0) == 3.0
    edited = _kernel_for(_problem_function(3.0), stale_key)
    assert edited(1.0) == 3.0 and _hit(edited)          # 3.0, not 4.0: stale


def test_unique_names_tag_the_qualified_name():
    def record():
        pass
    tagged = cache.unique_names("0123abcd")(record)
    assert tagged.__name__ == "record_0123abcd" and tagged.__qualname__.endswith("record_0123abcd")


def test_fingerprint_follows_compiled_helpers_in_other_modules():
    """A kernel's cache key covers the compiled functions its problem functions call by
    global name or through a module (an edited vmath.sin or _poly must not leave a stale
    kernel): the same caller text over two different helpers gets two fingerprints."""
    import types

    import numba

    from sdeverify.engine.cache import fingerprint

    def caller_over(helper_src):
        helpers = types.ModuleType("helpers")
        exec(f"import numba\n@numba.njit\ndef h(x):\n    return {helper_src}\n", helpers.__dict__)
        g = {"numba": numba, "helpers": helpers, "h": helpers.h}
        exec("def f(x):\n    return helpers.h(x) + h(x)\n", g)
        return numba.njit(g["f"])

    a, b, a2 = caller_over("x + 1.0"), caller_over("x + 2.0"), caller_over("x + 1.0")
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(a) == fingerprint(a2)
