"""Availability against the SE load rho, drawn like StarFish's Figures 3 and 4.

matplotlib is optional (extras `bench` and `dev`): imported only here, only when a plot is
asked for, and its absence is a clear error that names the fix.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

from ophiura.availability.starfish import eq1, eq2

FIG4_RHO_HE = (Fraction(0), Fraction(1, 1000), Fraction(1, 100), Fraction(1, 10))


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable(
            "--plot needs matplotlib: pip install 'ophiura[bench]' (or .venv/bin/pip install "
            "-e '.[dev,fast]', which includes it)"
        ) from None
    return plt


def rho_grid(points: int = 199) -> list[Fraction]:
    """rho in (0, 1): Eq. 1 and 2 are not valid at either end."""
    return [Fraction(i, points + 1) for i in range(1, points + 1)]


def plot_availability(
    path: Path,
    n: int = 3,
    qs: tuple[int, ...] = (1, 2, 3),
    rho_he: tuple[Fraction, ...] = FIG4_RHO_HE,
    max_n_fig3: int = 6,
) -> Path:
    """Three panels: Fig. 3 (Eq. 1, Q = 1, N = 1..6), Eq. 1 for N with Q = 1..3, and Fig. 4
    (Eq. 2, N, Q = 1..3, one line style per HE load). Written as PNG to `path`."""
    plt = _pyplot()
    rhos = rho_grid()
    x = [float(r) for r in rhos]
    qs = tuple(q for q in qs if 1 <= q <= n)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharey=False)
    ax = axes[0]
    for k in range(1, max_n_fig3 + 1):
        ax.plot(x, [float(eq1(r, 1, k)) for r in rhos], label=f"N={k}")
    ax.set_title("Eq. 1, Q = 1 (StarFish Fig. 3)")
    ax = axes[1]
    for q in qs:
        ax.plot(x, [float(eq1(r, q, n)) for r in rhos], label=f"Q={q}")
    ax.set_title(f"Eq. 1, N = {n}")
    ax = axes[2]
    styles = ("-", "--", "-.", ":")
    colours = ("C0", "C1", "C2", "C3", "C4", "C5")
    for j, rh in enumerate(rho_he):
        for i, q in enumerate(qs):
            ax.plot(
                x,
                [float(eq2(r, rh, q, n)) for r in rhos],
                styles[j % len(styles)],
                color=colours[i % len(colours)],
                label=f"Q={q}, rho(HE)={float(rh):g}",
            )
    ax.set_title(f"Eq. 2 read-only, N = {n} (StarFish Fig. 4)")
    for ax in axes:
        ax.set_xlabel("SE load rho = lambda / mu")
        ax.set_ylabel("availability")
        ax.set_xlim(0, 1)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
