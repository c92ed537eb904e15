"""Engines: ``cpu`` (Numba), ``reference`` (NumPy), ``cuda`` (numba.cuda)."""
