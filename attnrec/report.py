"""The HTML evaluation report behind ``attnrec evaluate --report DIR``.

:func:`write_report` writes ``DIR/report.html`` (self-contained: every chart is
inlined as base64 PNG) and the same charts as PNG files next to it:

* ``metrics.png``: every accuracy metric of every model, bars labelled with the
  numbers the CLI table prints (same rounding);
* ``ndcg_by_length.png``: NDCG@10 by length of the test input history;
* ``popularity.png``: catalogue coverage and mean popularity of the
  recommended items (popularity bias), against the popularity of what users
  actually chose next;
* ``training_<model>.png``: loss and validation metric per epoch for models
  that declare ``REFIT`` (``training_summary()``, ``model.validation_``);
* ``attention_<model>.png``: attention heatmaps of a few example test users for
  models that declare ``ATTENTION`` (causal maps blank their unseen upper
  triangle; bidirectional ones, BERT4Rec, are drawn whole).

The report states the protocol at the top, and embeds every number it draws as
JSON (``<script type="application/json" id="report-data">``) so that tests and
other tools can check the charts against ``attnrec evaluate --json``.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

import attnrec
from attnrec.jsonable import to_jsonable
from attnrec.models.base import Capability

log = logging.getLogger(__name__)

#: inclusive (low, high) bounds of the history-length buckets; ``None`` = no upper bound
LENGTH_BUCKETS: tuple[tuple[int, int | None], ...] = (
    (0, 2), (3, 5), (6, 10), (11, 20), (21, 50), (51, 100), (101, 200), (201, None),
)
# Okabe-Ito: distinguishable with common colour-vision deficiencies
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
_ACCURACY = ("HR", "Recall", "NDCG", "MRR")
_KEY = re.compile(r"^(?P<family>[A-Za-z]+)@(?P<k>\d+)(?P<suffix>.*)$")
N_ATTENTION_EXAMPLES = 3
ATTENTION_WINDOW = 20


def fmt(value: float) -> str:
    """A metric as the ``attnrec evaluate`` table prints it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"


@dataclass
class _Chart:
    file: str
    title: str
    caption: str
    alt: str
    b64: str = ""


@dataclass
class _Report:
    charts: list[_Chart] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ---- entry point -----------------------------------------------------------------------------
def write_report(
    report_dir: str | Path,
    runs: Sequence,
    split,
    protocol: str | None = None,
    ks: Sequence[int] = (5, 10, 20),
    exclude_history: bool = True,
    catalogue: Mapping[str, str] | None = None,
    n_examples: int = N_ATTENTION_EXAMPLES,
) -> Path:
    """Write ``report_dir/report.html`` and its PNG charts; returns the HTML path.

    ``runs`` are :class:`attnrec.pipeline.ModelRun` (fitted model + its test
    result), ``split`` the split they were evaluated on. ``catalogue`` maps raw
    item ids to names for the attention charts' axis labels (raw ids otherwise).
    """
    from matplotlib import rcParams

    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = list(runs)
    ks = sorted(set(int(k) for k in ks))
    protocol = protocol or (runs[0].result.protocol if runs else split.describe())
    rep = _Report()
    rep.data = {
        "protocol": protocol,
        "split": split.describe(),
        "exclude_history": bool(exclude_history),
        "ks": ks,
        "models": {
            r.name: {"metrics": dict(r.result.metrics), "n_cases": r.result.n_cases,
                     "fit_seconds": r.fit_seconds, "eval_seconds": r.eval_seconds}
            for r in runs
        },
        "charts": {},
    }
    rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    colors = {r.name: PALETTE[i % len(PALETTE)] for i, r in enumerate(runs)}
    if runs:
        _metrics_chart(out, rep, runs, colors)
        _length_chart(out, rep, runs, split, ks, exclude_history, colors)
        _popularity_chart(out, rep, runs, split, colors)
        for r in runs:
            _training_chart(out, rep, r)
        for r in runs:
            _attention_chart(out, rep, r, split, catalogue, n_examples)
    path = out / "report.html"
    path.write_text(_html(rep, runs, split, protocol, ks, exclude_history), encoding="utf-8")
    log.info("wrote %s with %d charts", path, len(rep.charts))
    return path


# ---- helpers --------------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out: Path, rep: _Report, name: str, title: str, caption: str, alt: str) -> None:
    fig.savefig(out / name, format="png")
    b64 = base64.b64encode((out / name).read_bytes()).decode("ascii")
    rep.charts.append(_Chart(name, title, caption, alt, b64))


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "model"


def _split_key(key: str) -> tuple[str, int, str] | None:
    m = _KEY.match(key)
    return (m["family"], int(m["k"]), m["suffix"]) if m else None


def _bars(ax, runs, groups: list[str], values: dict[str, list[float]], colors, record: list,
          metric_names: dict[str, list[str]], rotate: bool = True):
    """Grouped bars (groups on x, one bar per model), each labelled with :func:`fmt`."""
    n = len(runs)
    width = 0.8 / max(1, n)
    x = np.arange(len(groups))
    top = 0.0
    for i, r in enumerate(runs):
        vals = values[r.name]
        shown = [0.0 if v is None or not math.isfinite(v) else v for v in vals]
        bars = ax.bar(x - 0.4 + width * (i + 0.5), shown, width, label=r.name, color=colors[r.name])
        labels = [fmt(v) for v in vals]
        ax.bar_label(bars, labels=labels, rotation=90 if rotate else 0, fontsize=7, padding=2)
        for metric, v, lab in zip(metric_names[r.name], vals, labels):
            record.append({"model": r.name, "metric": metric, "value": v, "label": lab})
        top = max(top, max(shown, default=0.0))
    ax.set_xticks(x, groups)
    ax.set_ylim(0, top * 1.35 if top > 0 else 1)
    ax.grid(axis="y", alpha=0.3)


def _accuracy_keys(runs) -> list[str]:
    keys = [k for k in runs[0].result.metrics if (p := _split_key(k)) and p[0] in _ACCURACY]
    # Recall@K equals HR@K with one target per case (leave-one-out): shown only when it differs
    same = all(r.result.metrics.get(k) == r.result.metrics.get(k.replace("Recall@", "HR@", 1))
               for r in runs for k in keys if k.startswith("Recall@"))
    return [k for k in keys if not (same and k.startswith("Recall@"))]


# ---- charts ---------------------------------------------------------------------------------
def _metrics_chart(out, rep, runs, colors) -> None:
    keys = _accuracy_keys(runs)
    families = [f for f in _ACCURACY if any(_split_key(k)[0] == f for k in keys)]
    if not families:
        return
    fig = _figure(max(4.0, 3.6 * len(families)), 4.2)
    axes = fig.subplots(1, len(families), squeeze=False)[0]
    record: list = []
    for ax, fam in zip(axes, families):
        fam_keys = [k for k in keys if _split_key(k)[0] == fam]
        values = {r.name: [r.result.metrics.get(k, float("nan")) for k in fam_keys] for r in runs}
        _bars(ax, runs, [f"@{_split_key(k)[1]}" for k in fam_keys], values, colors, record,
              {r.name: fam_keys for r in runs})
        ax.set_title(fam + _split_key(fam_keys[0])[2])
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=min(len(runs), 6), frameon=False)
    rep.data["charts"]["metrics"] = record
    _save(fig, out, rep, "metrics.png", "Accuracy by model",
          "Every accuracy metric of the test stage; each bar is labelled with the value the "
          "`attnrec evaluate` table prints.",
          "Grouped bar charts of " + ", ".join(families) + " at each cut-off, one bar per model.")


def _per_case(run, split, ks, exclude_history) -> dict[str, np.ndarray] | None:
    """Per-case metric arrays of ``run`` (re-evaluated with ``per_case=True`` when missing)."""
    if run.result.per_case is not None:
        return run.result.per_case
    from attnrec.evaluation import evaluate

    m = re.search(r"sampled, (\d+) negatives", " ".join(run.result.metrics))
    sampled = int(m.group(1)) if m else None
    res = evaluate(run.model, split.test, ks=ks, exclude_history=exclude_history,
                   sampled_negatives=sampled, per_case=True)
    if any(res.metrics.get(k) != v for k, v in run.result.metrics.items() if _split_key(k)
           and _split_key(k)[0] in _ACCURACY):
        log.warning("re-evaluating %s for per-case metrics gave different numbers; "
                    "the length chart uses the re-evaluation", run.name)
    run.result.per_case = res.per_case
    return res.per_case


def _length_chart(out, rep, runs, split, ks, exclude_history, colors) -> None:
    k = 10 if 10 in ks else min(ks, key=lambda x: abs(x - 10))
    lengths = np.diff(np.asarray(split.test.hist_indptr))
    buckets = []
    for lo, hi in LENGTH_BUCKETS:
        sel = (lengths >= lo) & (lengths <= (hi if hi is not None else np.iinfo(np.int64).max))
        if sel.any():
            buckets.append((lo, hi, sel))
    if not buckets:
        return
    values: dict[str, list[float]] = {}
    key = None
    for r in runs:
        per = _per_case(r, split, ks, exclude_history)
        key = next((n for n in per if n.startswith(f"NDCG@{k}")), None)
        if key is None:
            return
        arr = np.asarray(per[key])
        values[r.name] = [float(arr[sel].mean()) for _, _, sel in buckets]
    labels = [f"{lo}–{hi}" if hi is not None else f"{lo}+" for lo, hi, _ in buckets]
    groups = [f"{lab}\n(n={int(sel.sum())})" for lab, (_, _, sel) in zip(labels, buckets)]
    fig = _figure(max(6.0, 1.0 + 0.55 * len(buckets) * max(2, len(runs))), 4.2)
    ax = fig.subplots()
    record: list = []
    _bars(ax, runs, groups, values, colors, record,
          {r.name: [f"{key} | history {lab}" for lab in labels] for r in runs})
    ax.set_xlabel("length of the test input history (items); n = test cases")
    ax.set_ylabel(key)
    ax.legend(loc="upper left", frameon=False, ncols=min(len(runs), 4))
    rep.data["charts"]["ndcg_by_length"] = {
        "metric": key, "buckets": labels, "n_cases": [int(sel.sum()) for _, _, sel in buckets],
        "values": values, "bars": record,
    }
    _save(fig, out, rep, "ndcg_by_length.png", f"{key} by history length",
          f"{key} of the test cases grouped by how many items the user had before the target "
          "(the mean over all buckets, weighted by n, is the table's number).",
          f"Grouped bar chart of {key} per history-length bucket, one bar per model.")


def _popularity_chart(out, rep, runs, split, colors) -> None:
    cov = [k for k in runs[0].result.metrics if k.startswith("Coverage@")]
    pop = [k for k in runs[0].result.metrics if k.startswith("AvgPop@")]
    if not cov and not pop:
        return
    counts = np.asarray(runs[0].model.item_counts_, dtype=np.float64)
    targets = np.asarray(split.test.target_items, dtype=np.int64)
    target_pop = float(counts[targets].mean()) if len(targets) else float("nan")
    fig = _figure(max(7.0, 2.4 * (len(cov) + len(pop)) / 2 * max(1, len(runs)) / 2), 4.2)
    axes = fig.subplots(1, 2)
    rec_cov: list = []
    rec_pop: list = []
    _bars(axes[0], runs, [k.split("@")[1].join(["@", ""]) for k in cov],
          {r.name: [r.result.metrics[k] for k in cov] for r in runs}, colors, rec_cov,
          {r.name: cov for r in runs})
    axes[0].set_title("Coverage: share of the catalogue recommended")
    _bars(axes[1], runs, [k.split("@")[1].join(["@", ""]) for k in pop],
          {r.name: [r.result.metrics[k] for k in pop] for r in runs}, colors, rec_pop,
          {r.name: pop for r in runs})
    axes[1].set_title("Mean popularity of recommended items")
    axes[1].set_ylabel("training interactions per item")
    if math.isfinite(target_pop):
        line = axes[1].axhline(target_pop, color="#444", linestyle="--", linewidth=1)
        axes[1].legend([line], [f"items chosen next (test targets): {fmt(target_pop)}"],
                       loc="upper right", frameon=False, fontsize=7)
        lo, hi = axes[1].get_ylim()
        axes[1].set_ylim(lo, max(hi, target_pop * 1.2))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=min(len(runs), 6), frameon=False)
    rep.data["charts"]["popularity"] = {"coverage": rec_cov, "avg_popularity": rec_pop,
                                        "target_popularity": target_pop}
    _save(fig, out, rep, "popularity.png", "Coverage and popularity bias",
          "Left: distinct items in any top-K list / catalogue size. Right: mean training "
          "popularity of the recommended items; the dashed line is the mean popularity of the "
          "items users actually chose next (test targets). Bars far above it mean the model "
          "leans on popular items more than users do.",
          "Two grouped bar charts: coverage at each cut-off and mean popularity of recommendations.")


def _training_chart(out, rep, run) -> None:
    if not run.model.supports(Capability.REFIT):
        return
    history = run.model.training_summary()["history"]
    validation = run.model.validation_ or {}
    vhist = list(validation.get("history") or [])
    if not history and not vhist:
        return
    metric = next((k for rec in (vhist or history) for k in rec
                   if k not in ("epoch", "loss", "seconds", "eval_seconds")), None)
    fig = _figure(9.0, 3.6)
    ax_loss, ax_val = fig.subplots(1, 2)
    data: dict[str, Any] = {"model": run.name}
    if vhist:
        ep = [h["epoch"] for h in vhist if "loss" in h]
        ax_loss.plot(ep, [h["loss"] for h in vhist if "loss" in h], marker="o", ms=3,
                     label="fit on train (validation run)", color=PALETTE[0])
        data["validation_loss"] = [h.get("loss") for h in vhist]
    if history:
        ep = [h["epoch"] for h in history if "loss" in h]
        ax_loss.plot(ep, [h["loss"] for h in history if "loss" in h], marker="s", ms=3,
                     label="final fit on train + valid", color=PALETTE[1])
        data["loss"] = [h.get("loss") for h in history]
    ax_loss.set_title("Training loss per epoch")
    ax_loss.set_xlabel("epoch")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(frameon=False, fontsize=7)
    source = vhist if any(metric in h for h in vhist) else history
    pts = [(h["epoch"], h[metric]) for h in source if metric and metric in h]
    if pts:
        ax_val.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, color=PALETTE[2])
        best = validation.get("best_epoch") or max(pts, key=lambda p: p[1])[0]
        best_val = dict(pts).get(best)
        ax_val.axvline(best, color="#444", linestyle="--", linewidth=1)
        if best_val is not None:
            ax_val.annotate(f"best epoch {best}: {fmt(best_val)}", (best, best_val),
                            xytext=(4, -12), textcoords="offset points", fontsize=7)
        ax_val.set_title(f"Validation {metric} per epoch")
        ax_val.set_xlabel("epoch")
        ax_val.grid(alpha=0.3)
        data.update(metric=metric, validation=[p[1] for p in pts], best_epoch=best)
    else:
        ax_val.set_axis_off()
        ax_val.text(0.5, 0.5, "no validation metric recorded", ha="center", va="center")
    fig.suptitle(run.name)
    rep.data["charts"].setdefault("training", []).append(data)
    name = f"training_{_slug(run.name)}.png"
    _save(fig, out, rep, name, f"Training curves: {run.name}",
          "Loss per epoch of the validation run (fit on train, early-stopped on the validation "
          "metric) and of the final fit on train + validation for the chosen number of epochs.",
          f"Line charts of training loss and validation {metric or 'metric'} per epoch for {run.name}.")


def _example_cases(split, n: int) -> list[int]:
    lengths = np.diff(np.asarray(split.test.hist_indptr))
    idx = np.flatnonzero((lengths >= 6) & (lengths <= ATTENTION_WINDOW))
    if len(idx) == 0:
        idx = np.flatnonzero(lengths >= 2)
    if len(idx) == 0:
        return []
    order = idx[np.argsort(lengths[idx], kind="stable")]
    picks = np.unique(np.linspace(0, len(order) - 1, num=min(n, len(order))).round().astype(int))
    return [int(order[p]) for p in picks]


def _attention_chart(out, rep, run, split, catalogue, n_examples) -> None:
    model = run.model
    if not model.supports(Capability.ATTENTION) or n_examples < 1:
        return
    cases = _example_cases(split, n_examples)
    if not cases:
        return
    imap, umap = model.item_map_, model.user_map_
    histories = [np.asarray(split.test.history(c), dtype=np.int64)[-ATTENTION_WINDOW:] for c in cases]
    maps = model.attention_maps(histories)
    lens = maps.lengths
    n_layers = len(maps.layers)
    # causal: position 0 can only attend to itself (weight 1): leave it out of the colour scale
    first = 1 if maps.causal else 0
    vmax = max((float(w[:, first:].mean(0).max()) for b in range(len(cases)) if int(lens[b]) > first
                for w in maps.history_maps(b)), default=1.0)
    vmax = max(vmax, 1e-6)
    fig = _figure(3.3 * n_layers + 0.8, 3.2 * len(cases))
    axes = fig.subplots(len(cases), n_layers, squeeze=False)
    examples = []
    image = None
    for row, (case, h) in enumerate(zip(cases, histories)):
        L = int(lens[row])
        items = h[len(h) - L:]
        labels = [_label(imap.to_raw(int(i)), catalogue) for i in items]
        user = umap.to_raw(int(split.test.users[case]))
        full_len = len(split.test.history(case))
        for layer, heads in enumerate(maps.history_maps(row)):
            ax = axes[row][layer]
            w = heads.mean(0).numpy().astype(np.float64)
            if maps.causal:  # the upper triangle is unseen, not zero
                w = np.where(np.tril(np.ones((L, L), dtype=bool)), w, np.nan)
            image = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
            ax.set_xticks(range(L), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(L), labels, fontsize=6)
            ax.set_title(f"user {user} · layer {layer + 1}", fontsize=8)
            if layer == 0:
                ax.set_ylabel("query (position)")
            if row == len(cases) - 1:
                ax.set_xlabel("key: attended item")
        examples.append({"user": user, "history_length": int(full_len), "shown": L,
                         "items": [imap.to_raw(int(i)) for i in items]})
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, extend="max",
                     label="attention weight (mean over heads)")
    rep.data["charts"].setdefault("attention", []).append({"model": run.name, "examples": examples,
                                                          "layers": n_layers, "causal": maps.causal})
    name = f"attention_{_slug(run.name)}.png"
    if maps.causal:
        how = ("Row t shows what the state at position t attended to (earlier positions only: the "
               "upper triangle is blank); the bottom row is the state that scores every candidate "
               "item. The first row is always 1 (the first item can only attend to itself) and is "
               "left out of the colour scale, which saturates at the largest other weight.")
    else:
        how = ("Row t shows what position t attended to, in both directions (bidirectional "
               "attention); the state that scores the candidates sits at an appended [MASK] "
               "position that is not drawn. The colour scale saturates at the largest weight.")
    _save(fig, out, rep, name, f"Attention of example users: {run.name}",
          f"Self-attention of {len(cases)} test users over their input history (the last "
          f"{ATTENTION_WINDOW} items at most, oldest at the top/left), averaged over heads, one "
          "column per layer. " + how,
          f"Heatmaps of attention weights for {len(cases)} example users and {n_layers} layers.")


def _label(raw: str, catalogue: Mapping[str, str] | None) -> str:
    name = catalogue.get(raw) if catalogue else None
    if not name:
        return raw
    return name if len(name) <= 24 else name[:23] + "…"


# ---- HTML -----------------------------------------------------------------------------------
_CSS = """
:root { color-scheme: light; --ink: #1b1f24; --muted: #57606a; --line: #d0d7de; --accent: #0a58ca; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       margin: 0 auto; max-width: 1180px; padding: 24px; }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h2 { font-size: 1.2rem; margin: 32px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.sub { color: var(--muted); margin: 0 0 16px; }
.protocol { border: 2px solid var(--accent); border-radius: 8px; padding: 12px 16px; background: #f3f8ff; }
.protocol dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0; }
.protocol dt { font-weight: 600; }
.protocol dd { margin: 0; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f6f8fa; position: sticky; top: 0; }
.scroll { overflow-x: auto; }
td.best { font-weight: 700; }
tr.time th, tr.time td { color: var(--muted); }
figure { margin: 16px 0 28px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: 0.9rem; margin-top: 4px; max-width: 80ch; }
.notes li { color: var(--muted); }
"""


def privacy_text(p: Mapping[str, Any] | None) -> str:
    """The model card's privacy line (the same fields the explorer's card shows)."""
    if not p:
        return "not differentially private"
    return (f"user-level DP-SGD: epsilon {p['epsilon']:.4f} (target {p['epsilon_target']}), "
            f"delta {p['delta']:.2e}, {p['accountant'].upper()} accountant, sampling rate "
            f"{p['sample_rate']:.4f}, clipping norm {p['max_grad_norm']}, noise multiplier "
            f"{p['noise_multiplier']:.4f}, {p['steps']}/{p['planned_steps']} steps")


def _html(rep: _Report, runs, split, protocol: str, ks, exclude_history: bool) -> str:
    e = html.escape
    n_items = int(runs[0].model.n_items_) if runs else 0
    n_cases = runs[0].result.n_cases if runs else len(split.test)
    sampled = "SAMPLED" in protocol
    ranking = (protocol.split(";")[1].strip() if sampled and ";" in protocol
               else f"full ranking: every test case is ranked against all {n_items:,} items")
    keys = list(runs[0].result.metrics) if runs else []
    # one row per metric, one column per model: readable with many cut-offs
    head = "".join(f"<th scope='col'>{e(r.name)}</th>" for r in runs)
    rows = []
    for k in keys:
        vals = [r.result.metrics.get(k, float("nan")) for r in runs]
        finite = [v for v in vals if v is not None and math.isfinite(v)]
        best = max(finite) if finite and len(runs) > 1 and not k.startswith("AvgPop@") else None
        cells = "".join(
            f"<td data-model='{e(r.name)}' data-metric='{e(k)}'"
            f"{' class=best' if best is not None and v == best else ''}>{fmt(v)}</td>"
            for r, v in zip(runs, vals))
        rows.append(f"<tr><th scope='row'>{e(k)}</th>{cells}</tr>")
    for label, seconds in (("fit seconds", [r.fit_seconds for r in runs]),
                           ("evaluate seconds", [r.eval_seconds for r in runs])):
        cells = "".join(f"<td>{x:.1f}</td>" for x in seconds)
        rows.append(f"<tr class='time'><th scope='row'>{label}</th>{cells}</tr>")
    privacy = "".join(f"<td class='privacy'>{e(privacy_text(r.model.privacy_guarantee()))}</td>" for r in runs)
    rows.append(f"<tr class='privacy'><th scope='row'>differential privacy</th>{privacy}</tr>")
    figures = []
    data_json = json.dumps(to_jsonable(rep.data, fallback=str), allow_nan=False)
    data_json = data_json.replace("</", "<\\/")
    for c in rep.charts:
        figures.append(
            f"<figure id='{e(Path(c.file).stem)}'><h3>{e(c.title)}</h3>"
            f"<img src='data:image/png;base64,{c.b64}' alt='{e(c.alt)}' data-file='{e(c.file)}'>"
            f"<figcaption>{e(c.caption)} <a href='{e(c.file)}'>{e(c.file)}</a></figcaption></figure>"
        )
    generated = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>attnrec evaluation report</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>attnrec evaluation report</h1>
<p class="sub">{len(runs)} model{'s' if len(runs) != 1 else ''} · generated {e(generated)} · attnrec {e(attnrec.__version__)}</p>
</header>
<main>
<section class="protocol" aria-labelledby="protocol-h">
<h2 id="protocol-h" style="margin-top:0;border:0">Protocol</h2>
<dl>
<dt>Split</dt><dd>{e(split.describe())}</dd>
<dt>Ranking</dt><dd>{e(ranking)}</dd>
<dt>History items</dt><dd>{'excluded from the ranking (items a user already had are never counted as hits)' if exclude_history else 'kept in the ranking (repeat consumption allowed)'}</dd>
<dt>Test cases</dt><dd>{n_cases:,}</dd>
<dt>Cut-offs K</dt><dd>{', '.join(str(k) for k in ks)}</dd>
<dt>As printed</dt><dd><code>{e(protocol)}</code></dd>
</dl>
</section>
<section aria-labelledby="table-h">
<h2 id="table-h">Results</h2>
<p>The numbers <code>attnrec evaluate</code> prints (mean over the test cases; the best model per metric in bold; AvgPop is not ranked: lower means less popularity bias).</p>
<div class="scroll"><table id="metrics-table">
<thead><tr><th scope="col">metric</th>{head}</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table></div>
</section>
<section aria-labelledby="charts-h">
<h2 id="charts-h">Charts</h2>
{chr(10).join(figures) if figures else '<p>No charts: no model was evaluated.</p>'}
</section>
</main>
<script type="application/json" id="report-data">{data_json}</script>
</body>
</html>
"""
