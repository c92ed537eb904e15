"""Figures for a paper: the style (serif text and mathtext, no text under 7 pt, the paper's
column widths, matplotlib's settings restored), the formats (png, pdf, svg; by the path's
suffix and ``--format``), and fitted lines drawn only over the points they were fitted on."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from sdeverify import figstyle  # noqa: E402
from sdeverify.cli import main  # noqa: E402
from sdeverify.experiments import weak_approximation  # noqa: E402
from sdeverify.experiments.base import ExperimentResult, save_figure, subplots  # noqa: E402

MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF", "svg": b"<?xml"}


def test_fit_line_stays_inside_the_fitted_range():
    fig, ax = plt.subplots()
    x = np.array([0.04, 0.01, 0.02])
    line = figstyle.fit_line(ax, x, order=1.5, log_c=0.3)
    xs = line.get_xdata()
    assert xs.min() == pytest.approx(0.01) and xs.max() == pytest.approx(0.04)
    np.testing.assert_allclose(line.get_ydata(), np.exp(0.3) * xs ** 1.5)
    assert figstyle.fit_line(ax, x, order=np.nan, log_c=0.3) is None       # no fit, no line
    line = figstyle.fit_line(ax, x, predict=lambda t: 2 * t)
    np.testing.assert_allclose(line.get_ydata(), 2 * line.get_xdata())
    with pytest.raises(ValueError, match="order and log_c"):
        figstyle.fit_line(ax, x)
    plt.close(fig)


def _weak_approximation_result() -> ExperimentResult:
    """Data shaped as weak_approximation saves it: 2 alphas, 6 Monte Carlo etas whose tail
    fit (the 3 smallest) is drawn; the errors are flat at large eta (pre-asymptotic)."""
    ee = 0.2 * 2.0 ** -np.arange(6)
    me = ee.copy()
    d = {"alphas": np.array([0.0, 0.5]), "exact_etas": ee, "mc_etas": me,
         "exact_error": np.stack([[ee ** 0.5], [ee ** 0.25]]),
         "schedule_wsd_err": np.stack([ee, 2 * ee]), "schedule_alt_err": np.stack([ee, 3 * ee]),
         "schedule_wsd_fits": np.ones((2, 4)), "schedule_alt_fits": np.ones((2, 4))}
    mc = np.empty((2, 1, 6, 3))
    for ai in range(2):
        est = np.minimum(0.27, ee ** 0.5)
        mc[ai, 0] = np.stack([est, 0.9 * est, 1.1 * est], axis=-1)
        d[f"fit_exact_a{ai}_loss"] = np.array([0.5, 0.4, 0.6, 0.0])
        d[f"fit_mc_a{ai}_loss"] = np.array([0.5, 0.4, 0.6, 0.0])
    d["mc_error"] = mc
    return ExperimentResult("weak_approximation", {}, d, ())


def test_weak_approximation_draws_its_monte_carlo_fit_over_the_fitted_points_only(monkeypatch,
                                                                                    tmp_path):
    """The fitted power law of the middle panel used to be drawn over every eta: at the
    largest eta it read 0.45 where the data sit at 0.27 (the fit never used those points)."""
    drawn = {}

    def keep(fig, path):
        drawn["fig"] = fig
        return path
    monkeypatch.setattr(weak_approximation, "save_figure", keep)
    res = _weak_approximation_result()
    weak_approximation.plot(res, tmp_path / "w.png")
    ax = drawn["fig"].axes[1]
    fitted = res.data["mc_etas"][-3:]                         # tail_fit's points
    lines = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"
             and ln.get_label().startswith("_") and len(ln.get_xdata()) > 1]
    assert len(lines) == 2                                    # one per alpha
    for ln in lines:
        xs = np.asarray(ln.get_xdata())
        assert xs.min() >= fitted.min() * (1 - 1e-12) and xs.max() <= fitted.max() * (1 + 1e-12)
    _check_style(drawn["fig"])
    plt.close(drawn["fig"])


def _check_style(fig) -> None:
    """Every text of ``fig`` is at least 7 pt and serif; the figure fits two columns."""
    assert fig.get_size_inches()[0] <= figstyle.TWO_COLUMN + 1e-9
    fig.canvas.draw()
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_text().strip()]
    assert texts
    for t in texts:
        assert t.get_fontsize() >= figstyle.MIN_FONT_PT, (t.get_text(), t.get_fontsize())
        assert t.get_fontfamily() == ["serif"], (t.get_text(), t.get_fontfamily())


def test_the_style_applies_while_drawing_and_is_restored(tmp_path):
    before = dict(matplotlib.rcParams)

    @figstyle.styled
    def draw(path):
        fig, ax = subplots(2)
        ax[0].plot([1, 2], [3, 4], label=r"$\eta$")
        ax[0].legend()
        ax[1].set_xlabel(r"$\mathrm{Var}(x_{k+1} - x_k)$")
        _check_style(fig)
        return save_figure(fig, path)
    draw(tmp_path / "f.png")
    assert dict(matplotlib.rcParams) == before
    assert figstyle.figsize(2) == (6.9, pytest.approx(0.8 * 3.45 + 0.45))
    assert figstyle.figsize(1, width="one")[0] == 3.3
    with pytest.raises(ValueError, match="width"):
        figstyle.figsize(1, width="three")


@pytest.mark.parametrize("fmt", figstyle.FORMATS)
def test_a_figure_is_written_in_the_format_of_its_suffix(fmt, tmp_path):
    fig, ax = subplots(1)
    ax.plot([1, 2], [1, 4])
    path = save_figure(fig, tmp_path / f"f.{fmt}")
    assert path.read_bytes()[:len(MAGIC[fmt])] == MAGIC[fmt]


def test_an_unknown_figure_suffix_is_a_clear_error(tmp_path):
    fig, _ = subplots(1)
    with pytest.raises(ValueError, match="one of png, pdf, svg"):
        save_figure(fig, tmp_path / "f.jpeg")
    plt.close(fig)


def test_run_writes_its_figure_in_the_format_asked_and_the_report_shows_it(tmp_path, capsys):
    """`sdeverify run NAME --format svg`: the figure in that format only, shown inline by
    report.html; with the figure as a PDF the report redraws it as a PNG for the page
    without leaving one in the folder."""
    from sdeverify import experiments
    assert main(["run", "hb_equivalence", "--size", "smoke", "--quiet", "--format", "svg",
                 "--out", str(tmp_path)]) == 0
    svg = tmp_path / "hb_equivalence.svg"
    assert svg.read_bytes()[:5] == MAGIC["svg"] and not (tmp_path / "hb_equivalence.png").exists()
    assert main(["report", str(tmp_path)]) == 0
    assert "data:image/svg+xml;base64," in (tmp_path / "report.html").read_text()
    res = ExperimentResult.load(tmp_path, "hb_equivalence")
    svg.unlink()
    pdf = experiments.get("hb_equivalence").plot(res, tmp_path / "hb_equivalence.pdf")
    assert pdf.read_bytes()[:4] == MAGIC["pdf"]
    assert main(["report", str(tmp_path)]) == 0
    assert "data:image/png;base64," in (tmp_path / "report.html").read_text()
    assert not (tmp_path / "hb_equivalence.png").exists()
    with pytest.raises(SystemExit) as e:
        main(["run", "hb_equivalence", "--format", "jpeg"])
    assert e.value.code == 2 and "--format" in capsys.readouterr().err
