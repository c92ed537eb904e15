"""The package's version, in a module of its own so that any module can read it without
importing the package's facade (``sdeverify/__init__.py``, which imports nearly everything).
It must equal ``version`` in ``pyproject.toml`` (``tests/test_imports.py`` checks)."""
__version__ = "0.1.0"

__all__ = ["__version__"]
