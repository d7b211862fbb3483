"""The report's plots, drawn with matplotlib's Agg canvas (no display, no pyplot state) to PNG bytes.

Each function takes the metrics dict (or the training log) and returns PNG bytes, or None when
there is nothing to draw.
"""

from __future__ import annotations

import io
from typing import Any

TITLES = {
    "accuracy.png": "Accuracy at attempt 1 and attempt 2 (95% intervals)",
    "transitions.png": "From attempt 1 to attempt 2, per model (samples)",
    "training.png": "Training per optimizer step: loss, and DPO's reward margin and rewards or SCoRe's rewards and KL",
    "selfee.png": "SelFee: accuracy after K enforced revisions (95% intervals)",
}
T1, T2 = "#4c72b0", "#dd8452"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _points(xs: list[float], ms: list[dict[str, Any] | None]) -> tuple[list[float], list[float], list[list[float]]]:
    """x, value and asymmetric error bars, in percent, of the intervals {"value", "low", "high"} that have
    a value (a metric over no judged sample has none, and no point).

    A whisker is never negative, even from a metrics.json whose bound lies a rounding error past
    its value (as the eval wrote them before its intervals were made to hold their estimate).
    """
    found = [(x, m) for x, m in zip(xs, ms, strict=True) if m and m.get("value") is not None]
    vals = [100 * m["value"] for _, m in found]
    low = [max(0.0, 100 * (m["value"] - m["low"])) for _, m in found]
    high = [max(0.0, 100 * (m["high"] - m["value"])) for _, m in found]
    return [x for x, _ in found], vals, [low, high]


def plot_accuracy(metrics: dict[str, Any]) -> bytes:
    labels = list(metrics["models"])
    t1 = [metrics["models"][k].get("acc_t1") for k in labels]
    t2 = [metrics["models"][k].get("acc_t2") for k in labels]
    fig = _figure(max(4.5, 1.6 * len(labels) + 2), 3.8)
    ax = fig.add_subplot()
    xs = range(len(labels))
    w = 0.38
    for offset, ms, name, color in ((-w / 2, t1, "Acc@t1 (attempt 1)", T1), (w / 2, t2, "Acc@t2 (attempt 2)", T2)):
        pos, vals, whiskers = _points([x + offset for x in xs], ms)
        ax.bar(pos, vals, w, yerr=whiskers, capsize=4, color=color, label=name)
        for x, v, up in zip(pos, vals, whiskers[1], strict=True):  # above the whisker, clear of it
            ax.text(x, v + up + 1.5, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
        for x, m in zip(xs, ms, strict=True):
            if not m or m.get("value") is None:  # nothing judged: say so where the bar would be
                ax.text(x + offset, 1.5, "none\njudged", ha="center", va="bottom", fontsize=7, color="#666666")
    ax.set_xticks(list(xs), labels)
    ax.set_xlim(-0.6, len(labels) - 0.4)  # every model's place, with or without bars in it
    ax.set_xlabel("model")
    ax.set_ylabel("accuracy (% of samples)")
    ax.set_ylim(0, 105)
    ax.set_title(TITLES["accuracy.png"])
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def plot_transitions(metrics: dict[str, Any]) -> bytes | None:
    models = {k: m["transitions"] for k, m in metrics["models"].items() if m.get("transitions")}
    if not models:
        return None
    fig = _figure(3.2 * len(models) + 0.6, 3.4)
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, (label, t) in zip(axes, models.items(), strict=True):
        grid = [[t.get("c2c", 0), t.get("c2i", 0)], [t.get("i2c", 0), t.get("i2i", 0)]]
        total = sum(map(sum, grid)) or 1
        ax.imshow(grid, cmap="Blues", vmin=0, vmax=max(max(map(max, grid)), 1))
        peak = max(map(max, grid)) or 1
        for i in range(2):
            for j in range(2):
                n = grid[i][j]
                ax.text(j, i, f"{n}\n({100 * n / total:.0f}%)", ha="center", va="center", fontsize=10,
                        color="white" if n > 0.6 * peak else "black")
        ax.set_xticks([0, 1], ["right", "wrong"])
        ax.set_yticks([0, 1], ["right", "wrong"])
        ax.set_xlabel("attempt 2")
        ax.set_ylabel("attempt 1")
        ax.set_title(label)
    fig.suptitle(TITLES["transitions.png"], fontsize=11)
    return _png(fig)


def plot_training(train_log: list[dict[str, Any]], title: str | None = None) -> bytes | None:
    from matplotlib.ticker import MaxNLocator

    panels = [
        ("loss", [("loss", "loss", "#333333")]),
        ("DPO reward margin", [("rewards/margins", "chosen − rejected", "#55a868")]),
        ("DPO rewards", [("rewards/chosen", "chosen", T1), ("rewards/rejected", "rejected", "#c44e52")]),
        ("SCoRe training reward", [("reward_t1", "attempt 1", T1), ("reward_t2", "attempt 2", T2),
                                   ("delta", "Δ = attempt 2 − attempt 1", "#55a868")]),
        ("SCoRe KL to the reference", [("kl_t1", "attempt 1", T1), ("kl_t2", "attempt 2", T2)]),
    ]
    panels = [(t, [s for s in series if any(s[0] in r for r in train_log)]) for t, series in panels]
    panels = [(t, series) for t, series in panels if series]
    if not panels:
        return None
    fig = _figure(4.2 * len(panels), 3.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel, series) in zip(axes, panels, strict=True):
        for key, name, color in series:
            pts = [(r["step"], r[key]) for r in train_log if isinstance(r.get(key), (int, float))]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, color=color, label=name)
        ax.set_title(panel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(panel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or TITLES["training.png"], fontsize=11)
    return _png(fig)


def plot_selfee(metrics: dict[str, Any]) -> bytes | None:
    found = {k: m["selfee_k"] for k, m in metrics["models"].items() if m.get("selfee_k")}
    if not found:
        return None
    fig = _figure(5.5, 3.6)
    ax = fig.add_subplot()
    markers = "osD^v<>p"
    for i, (label, by_k) in enumerate(found.items()):
        ks = sorted(by_k, key=int)
        dodge = 0.08 * (i - (len(found) - 1) / 2)  # models side by side, not on top of each other
        pos, vals, whiskers = _points([int(k) + dodge for k in ks], [by_k[k] for k in ks])
        ax.errorbar(pos, vals, yerr=whiskers, marker=markers[i % len(markers)], capsize=4, label=label)
    ax.set_xticks(sorted({int(k) for by_k in found.values() for k in by_k}))
    ax.set_xlabel("K (enforced revisions)")
    ax.set_ylabel("accuracy (% of samples)")
    ax.set_ylim(0, 105)
    ax.set_title(TITLES["selfee.png"])
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def draw_all(metrics: dict[str, Any], train_log: list[dict[str, Any]]) -> dict[str, bytes]:
    """Every plot there is data for, by file name."""
    drawn = {
        "accuracy.png": plot_accuracy(metrics),
        "transitions.png": plot_transitions(metrics),
        "training.png": plot_training(train_log),
        "selfee.png": plot_selfee(metrics),
    }
    return {name: png for name, png in drawn.items() if png is not None}
