"""One figure style for every check's plot: a paper's column widths, serif text and mathtext,
legends and ticks that stay readable when the figure is printed at its width.

* :data:`ONE_COLUMN` / :data:`TWO_COLUMN`: the widths (inches) of one and of both columns of
  a two-column paper; :func:`figsize` gives a figure of ``ncols × nrows`` panels at one of
  them.
* :data:`RC`: the matplotlib settings (serif text, serif mathtext, 8 pt labels, 7 pt ticks
  and legends) applied while a plot is drawn by :func:`styled` (a decorator on every
  ``plot(result, path)``), restored afterwards: a user's own matplotlib settings are left
  as they were.
* :data:`FORMATS`: the formats a figure can be written in (png, pdf, svg; chosen by the
  path's suffix, ``--format`` of ``sdeverify check``/``run``/``train``); PNG at :data:`DPI`.
* :func:`fit_line`: a fitted power law ``C·x^p`` drawn over the range it was fitted on and
  no further (a line extended beyond its fit range shows a prediction the fit never made).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["ONE_COLUMN", "TWO_COLUMN", "DPI", "FORMATS", "RC", "check_format", "figsize",
           "styled", "legend_below", "fit_line"]

#: width (inches) of one column of a two-column paper
ONE_COLUMN: float = 3.3
#: width (inches) of both columns of a two-column paper
TWO_COLUMN: float = 6.9
#: resolution of PNG figures (dots per inch): 6.9 in → 1380 px
DPI: int = 200
#: figure formats that ``save_figure`` writes (by the path's suffix)
FORMATS: tuple[str, ...] = ("png", "pdf", "svg")
#: the smallest font size (pt) of any text in a figure (legends, ticks)
MIN_FONT_PT: float = 7.0

RC: dict[str, Any] = {
    "font.family": "serif",
    "font.serif": ["DejaVu Serif"],          # shipped with matplotlib: Greek and ≥, ≤, − glyphs
    "mathtext.fontset": "dejavuserif",       # mathtext in the same serif face as the text
    "font.size": 8.0,
    "axes.titlesize": 8.0,
    "axes.labelsize": 8.0,
    "xtick.labelsize": MIN_FONT_PT,
    "ytick.labelsize": MIN_FONT_PT,
    "legend.fontsize": MIN_FONT_PT,
    "legend.title_fontsize": MIN_FONT_PT,
    "figure.titlesize": 9.0,
    "lines.linewidth": 1.0,
    "lines.markersize": 3.5,
    "errorbar.capsize": 1.5,
    "legend.frameon": False,
    "axes.grid": False,
    "savefig.dpi": DPI,
    "svg.fonttype": "none",                  # SVG text stays text (searchable, editable)
    "pdf.fonttype": 42,                      # TrueType in PDF, as journals ask
}


def check_format(fmt: str, flag: str = "--format") -> str:
    """``fmt`` if it is one of :data:`FORMATS`, else a ``ValueError`` naming ``flag``."""
    if fmt not in FORMATS:
        raise ValueError(f"{flag} must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def figsize(ncols: int = 1, nrows: int = 1, width: float | str = "two",
            aspect: float = 0.8) -> tuple[float, float]:
    """(width, height) in inches of a figure of ``ncols × nrows`` panels: ``width`` is
    ``"one"`` (:data:`ONE_COLUMN`), ``"two"`` (:data:`TWO_COLUMN`) or inches; each panel's
    height is ``aspect`` × its width, plus room for the labels."""
    w = {"one": ONE_COLUMN, "two": TWO_COLUMN}.get(width, width) if isinstance(width, str) else width
    if not isinstance(w, (int, float)) or not w > 0:
        raise ValueError(f"width must be 'one', 'two' or a positive number of inches, got {width!r}")
    if ncols < 1 or nrows < 1:
        raise ValueError(f"ncols and nrows must be >= 1, got {ncols}, {nrows}")
    panel = float(w) / ncols
    return float(w), round(nrows * (aspect * panel + 0.45), 2)


def styled(plot: Callable[..., Path]) -> Callable[..., Path]:
    """Decorator: draw ``plot(result, path)`` under :data:`RC` (matplotlib's settings are
    restored when it returns or raises)."""
    @functools.wraps(plot)
    def wrapper(*args: Any, **kwargs: Any) -> Path:
        import matplotlib
        with matplotlib.rc_context(RC):
            return plot(*args, **kwargs)
    return wrapper


def legend_below(ax: Any, ncol: int = 1, drop: float = 0.42, **kwargs: Any) -> Any:
    """The legend of ``ax`` under the panel, ``drop`` inches below its lower edge (under the
    tick labels and the x label), ``ncol`` columns: long labels at a readable size without
    covering the data or squeezing the panel (the figure's constrained layout makes room)."""
    from matplotlib.transforms import ScaledTranslation
    where = ax.transAxes + ScaledTranslation(0, -drop, ax.figure.dpi_scale_trans)
    return ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=where,
                     ncol=ncol, **kwargs)


def fit_line(ax: Any, x_fit: np.ndarray, *, order: float | None = None, log_c: float | None = None,
             predict: Callable[[np.ndarray], np.ndarray] | None = None, n: int = 40,
             **kwargs: Any) -> Any:
    """Draw a fitted curve on ``ax`` over exactly the range of the points it was fitted on,
    ``[min x_fit, max x_fit]`` (geometrically spaced): the power law ``exp(log_c)·x^order``
    (:func:`sdeverify.stats.fit_order`'s ``log_c`` and order), or ``predict(x)``.  Returns
    the ``Line2D`` (``kwargs`` go to ``ax.plot``); None when ``x_fit`` has no positive finite
    point or the fit's numbers are not finite (no fit, nothing drawn)."""
    x = np.asarray(x_fit, dtype=float).ravel()
    x = x[np.isfinite(x) & (x > 0)]
    if predict is None:
        if order is None or log_c is None:
            raise ValueError("fit_line needs order and log_c, or predict")
        if not (np.isfinite(order) and np.isfinite(log_c)):
            return None
        predict = lambda t: np.exp(log_c) * t ** order   # noqa: E731
    if x.size == 0:
        return None
    xx = np.geomspace(x.min(), x.max(), n) if x.max() > x.min() else x[:1]
    line, = ax.plot(xx, predict(xx), **kwargs)
    return line
