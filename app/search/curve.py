"""The d90 curve, like the paper's Figure 1: metric against d on a log axis, with the full
fine-tuning level, the 90 % bar, d90 (or where it lies when censored) and the points that break
the order. Drawn for a search folder (PNG, SVG) and for the API's curve route."""

from __future__ import annotations

import math
from pathlib import Path

from app.search.plan import D90Result, upgrade_results


def _spaced_labels(ds: list[int], keep: int | None = None, min_frac: float = 0.045) -> list[str]:
    """A label for each d, blank where it would overlap one already shown: bisection puts
    points a few percent apart on a log axis. `keep` (d90) is labelled first, then the ends,
    then the rest in order; a label needs `min_frac` of the axis' log span to its neighbours."""
    span = max(math.log10(ds[-1] / ds[0]), 1e-9) if ds else 1.0
    order = [d for d in (keep, ds[0] if ds else None, ds[-1] if ds else None) if d in ds]
    shown: list[int] = []
    for d in order + ds:
        if d not in shown and all(abs(math.log10(d / o)) / span >= min_frac for o in shown):
            shown.append(d)
    return [str(d) if d in shown else "" for d in ds]


def curve_figure(results: dict, metric: str):
    """The curve as a matplotlib figure from a results dict (D90Result.to_dict(), possibly
    partial, or an old one): metric vs d (log scale) with each seeded point's sd, the full
    fine-tuning level, the bar, d90 (marked when censored) and the d that fail above a passing
    one (when the order is not monotone)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = upgrade_results(results)
    points = sorted(results.get("points", []), key=lambda p: p["d"])
    fig, ax = plt.subplots(figsize=(6, 4))
    method = results.get("plan", {}).get("method", "subspace")
    ax.plot([p["d"] for p in points], [p["metric"] for p in points], "o-", label=method)
    seeded = [p for p in points if p.get("sd") is not None]
    if seeded:
        n = max(len(p.get("seeds") or ()) for p in seeded)
        ax.errorbar([p["d"] for p in seeded], [p["metric"] for p in seeded],
                    yerr=[p["sd"] for p in seeded], fmt="none", ecolor="C0", capsize=3,
                    label=f"mean ± sd over {n} seeds")  # fmt: skip
    failed = sorted({v["failed_d"] for v in results.get("violations") or ()})
    if failed:
        by_d = {p["d"]: p["metric"] for p in points}
        ax.plot(failed, [by_d[d] for d in failed], "x", color="red", markersize=10,
                markeredgewidth=2, label="fails above a passing d (not monotone)")  # fmt: skip
    if results.get("full_metric") is not None:
        ax.axhline(results["full_metric"], color="grey", linestyle="--", label="full fine-tuning")
        share = results.get("plan", {}).get("threshold", 0.9)
        ax.axhline(results["bar"], color="red", linestyle=":", label=f"{share:.0%} bar")
    if results.get("floor") is not None:
        constant = metric in ("pearson", "spearman")  # regression: a constant prediction
        ax.axhline(results["floor"], color="black", alpha=0.3,
                   label="constant prediction" if constant else "majority class")  # fmt: skip
    censored = results.get("censored")
    if results.get("d90") is not None:
        label = f"d90 = {results['d90']}"
        if censored == "left":
            label = f"d90 ≤ {results['d90']} (left-censored)"
        ax.axvline(results["d90"], color="green", alpha=0.5, label=label)
    elif censored == "right" and points:
        top = results.get("plan", {}).get("max_d", points[-1]["d"])
        ax.axvline(top, color="orange", linestyle="-.", label=f"d90 > {top} (right-censored)")
    if censored in ("left", "right") and points:  # an arrow into the side where d90 lies
        left = censored == "left"
        edge = results["d90"] if left else top
        ax.annotate(f"← d90 ≤ {edge}" if left else f"d90 > {edge} →", xy=(edge, 0.5),
                    xycoords=("data", "axes fraction"), xytext=(6 if left else -6, 0),
                    textcoords="offset points", ha="left" if left else "right", va="center",
                    color="green" if left else "darkorange", fontsize="small")  # fmt: skip
    if points:  # a log axis needs data (a degenerate search has none)
        ax.set_xscale("log")
        # Label the d values trained, not the decades: a search often spans less than one
        # decade, which leaves a log axis with no labelled tick at all.
        ds = sorted({p["d"] for p in points})
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ds))
        labels = _spaced_labels(ds, results.get("d90"))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter(labels))
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.tick_params(axis="x", labelrotation=45 if len(ds) > 6 else 0)
    ax.set_xlabel("subspace dimension d")
    ax.set_ylabel(metric)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def curve_bytes(results: dict, metric: str, fmt: str = "png") -> bytes:
    import io

    import matplotlib.pyplot as plt

    fig = curve_figure(results, metric)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=120)
    plt.close(fig)
    return buf.getvalue()


def plot_curve(result: D90Result, metric: str, stem: Path) -> None:
    """PNG and SVG of the curve, like the paper's Figure 1."""
    for fmt in ("png", "svg"):
        stem.with_suffix(f".{fmt}").write_bytes(curve_bytes(result.to_dict(), metric, fmt))
