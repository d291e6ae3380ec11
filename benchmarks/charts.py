"""Charts of the benchmark tables (matplotlib: `pip install -e ".[bench]"`).

    python benchmarks/charts.py            # redraw every chart from the Markdown tables in benchmarks/

run.py and latency.py draw theirs after measuring; this script redraws from a table alone.
"""

from __future__ import annotations

import os
from pathlib import Path

from common import MODES

HERE = Path(__file__).resolve().parent
COLOURS = {"block": "tab:blue", "dense": "tab:red", "previous": "tab:gray", "full": "tab:red", "cold": "tab:orange",
           "warm": "tab:green"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def scaling_chart(rows: list[dict], path: str | Path) -> None:
    """Log-log: GLA attention time and memory growth against tokens N, block-wise vs naive dense."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
    by_tokens = {r["tokens"]: r for r in rows}  # one point per size, whatever the methods
    for ax, key, title in ((axes[0], "seconds", "GLA attention time (s)"),
                           (axes[1], "growth_mb", "GLA attention memory growth (MiB)")):
        for kind, label in (("block", "block-wise"), ("dense", "naive dense")):
            pts = sorted((n, max(r[kind][key], 1.0) if key == "growth_mb" else r[kind][key])
                         for n, r in by_tokens.items() if r.get(kind) and "error" not in r[kind])
            if pts:
                ax.plot(*zip(*pts), "o-", color=COLOURS[kind], label=label, linewidth=2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens N")
        ax.set_title(title + " vs tokens N")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    _save(fig, path)
    plt.close(fig)


def latency_chart(rows: list[dict], path: str | Path) -> None:
    """Bars: seconds from process start to files written, per class list, dtype and text mode."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 1), 4.5), layout="constrained")
    for i, r in enumerate(rows):
        ax.bar(i, r["seconds"], color=COLOURS[r["mode"]], width=0.7)
        ax.annotate(f"{r['seconds']:g} s", (i, r["seconds"]), ha="center", va="bottom", fontsize=8)
    ticks = [f"{r['classes']}\n{r['dtype']}\n" + r["text"].replace(", ", "\n").replace(" (", "\n(") for r in rows]
    ax.set_xticks(range(len(rows)), ticks, fontsize=7)
    ax.set_ylabel("seconds")
    ax.set_title("glaclip segment: process start -> files written")
    _save(fig, path)
    plt.close(fig)


def _table(path: Path) -> list[list[str]]:
    """The cells of the first Markdown table in a file (header and rule dropped)."""
    rows, seen = [], False
    for line in path.read_text().splitlines():
        if line.startswith("|"):
            if seen:
                rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            seen = True
        elif seen:
            break
    return rows[1:]


def results_rows(path: Path) -> list[dict]:
    """run.py's rows back from its Markdown table."""
    out = []
    for c in _table(path):
        def result(s, mb):
            try:
                return {"seconds": float(s), "growth_mb": float(mb)}
            except ValueError:
                return None
        out.append({"tokens": int(c[2]), "block": result(c[6], c[7]), "dense": result(c[8], c[9])})
    return out


def latency_rows(path: Path) -> list[dict]:
    """latency.py's rows back from its Markdown table."""
    mode_of = {v: k for k, v in MODES.items()}
    return [{"classes": c[0], "dtype": c[1], "text": c[2], "mode": mode_of[c[2]], "seconds": float(c[3])}
            for c in _table(path)]


def main() -> None:
    for md in sorted(HERE.glob("results-*.md")):
        scaling_chart(results_rows(md), md.with_suffix(".png"))
        print(f"wrote {md.with_suffix('.png')}")
    for md in sorted(HERE.glob("latency-*.md")):
        latency_chart(latency_rows(md), md.with_suffix(".png"))
        print(f"wrote {md.with_suffix('.png')}")


if __name__ == "__main__":
    main()
