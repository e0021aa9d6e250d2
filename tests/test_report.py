"""``attnrec evaluate --report``: the HTML report shows exactly the numbers the CLI prints."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("matplotlib")

from attnrec.cli import app  # noqa: E402
from attnrec.report import fmt, write_report  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """Collects what the tests read: images, table cells, the embedded data, links."""

    def __init__(self):
        super().__init__()
        self.images: list[dict] = []
        self.cells: dict[tuple[str, str], str] = {}
        self.links: list[str] = []
        self.data_json = ""
        self.text: list[str] = []
        self._cell: tuple[str, str] | None = None
        self._in_data = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        elif tag == "td" and "data-metric" in a:
            self._cell = (a["data-model"], a["data-metric"])
            self.cells[self._cell] = ""
        elif tag == "script" and a.get("id") == "report-data":
            self._in_data = True
        elif tag in ("a", "link", "script") and (a.get("href") or a.get("src")):
            self.links.append(a.get("href") or a.get("src"))

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None
        elif tag == "script":
            self._in_data = False

    def handle_data(self, data):
        if self._in_data:
            self.data_json += data
        elif self._cell is not None:
            self.cells[self._cell] += data.strip()
        self.text.append(data)


def _cli_table(output: str) -> dict[str, dict[str, str]]:
    """``{model: {column: printed cell}}`` from the rich table ``attnrec evaluate`` prints."""
    header = next(line for line in output.splitlines() if "┃" in line and "model" in line)
    cols = [c.strip() for c in header.strip().strip("┃").split("┃")]
    rows = {}
    for line in output.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            rows[cells[0]] = dict(zip(cols[1:], cells[1:]))
    return rows


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from attnrec.data.synthetic import generate

    root = tmp_path_factory.mktemp("report")
    data_dir = generate(n_users=200, n_items=60, seed=3).write(root / "shop")
    out = root / "report"
    result = CliRunner().invoke(app, [
        "evaluate", str(data_dir / "interactions.csv"), "-m", "pop,ease,sasrec",
        "-p", "sasrec.epochs=3", "-p", "sasrec.d_model=16", "-p", "sasrec.max_len=20",
        "-p", "sasrec.num_threads=1", "-p", "sasrec.batch_size=64",
        "--json", str(root / "metrics.json"), "--report", str(out),
    ])
    assert result.exit_code == 0, result.output
    page = _Page()
    page.feed((out / "report.html").read_text(encoding="utf-8"))
    return {
        "out": out, "stdout": result.stdout, "page": page,
        "json": json.loads((root / "metrics.json").read_text()),
        "data": json.loads(page.data_json),
    }


def test_report_files_and_self_contained(evaluated):
    out, page = evaluated["out"], evaluated["page"]
    assert "report:" in evaluated["stdout"] and str(out / "report.html") in evaluated["stdout"]
    for name in ("metrics.png", "ndcg_by_length.png", "popularity.png", "training_sasrec.png",
                 "attention_sasrec.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC), name
    # models without training history or attention get no such chart
    assert not (out / "attention_ease.png").exists() and not (out / "training_pop.png").exists()
    files = {img["data-file"] for img in page.images}
    assert files == {p.name for p in out.glob("*.png")}
    for img in page.images:  # every chart inlined, described for screen readers
        assert img["src"].startswith("data:image/png;base64,")
        assert img.get("alt")
    # nothing loaded from elsewhere: the only links are the PNG files next to the report
    assert all(link in files for link in page.links), page.links


def test_protocol_stated_at_the_top(evaluated):
    html = (evaluated["out"] / "report.html").read_text(encoding="utf-8")
    protocol = evaluated["json"]["protocol"]
    top = html[: html.index("metrics-table")]
    assert "leave-one-out" in top
    assert "full ranking" in top and "all 60 items" in top
    assert "excluded from the ranking" in top
    assert protocol in top
    assert evaluated["data"]["protocol"] == protocol


def test_embedded_numbers_equal_the_json_output(evaluated):
    want = evaluated["json"]["models"]
    got = evaluated["data"]["models"]
    assert list(got) == list(want) == ["pop", "ease", "sasrec"]
    for name, w in want.items():
        assert got[name]["metrics"] == w["metrics"], name  # exact, not approximately
        assert got[name]["n_cases"] == w["n_cases"]


def test_table_and_chart_labels_are_the_printed_numbers(evaluated):
    want = evaluated["json"]["models"]
    cells = evaluated["page"].cells
    for name, w in want.items():
        for metric, value in w["metrics"].items():
            assert cells[(name, metric)] == fmt(value), (name, metric)
    bars = evaluated["data"]["charts"]["metrics"]
    assert {b["model"] for b in bars} == set(want)
    for b in bars:
        assert b["value"] == want[b["model"]]["metrics"][b["metric"]]
        assert b["label"] == fmt(b["value"])
    # every accuracy number in the CLI's table is drawn, with the same text
    printed = _cli_table(evaluated["stdout"])
    drawn = {(b["model"], b["metric"]): b["label"] for b in bars}
    pop = evaluated["data"]["charts"]["popularity"]
    drawn.update({(b["model"], b["metric"]): b["label"] for b in pop["coverage"] + pop["avg_popularity"]})
    checked = 0
    for model, row in printed.items():
        for col, cell in row.items():
            if "@" in col:
                assert drawn[(model, col)] == cell, (model, col)
                checked += 1
    assert checked >= 3 * 8


def test_length_buckets_add_up_to_the_printed_ndcg(evaluated):
    chart = evaluated["data"]["charts"]["ndcg_by_length"]
    assert chart["metric"] == "NDCG@10"
    n = chart["n_cases"]
    assert sum(n) == evaluated["json"]["models"]["pop"]["n_cases"]
    for model, values in chart["values"].items():
        mean = sum(v * k for v, k in zip(values, n)) / sum(n)
        assert math.isclose(mean, evaluated["json"]["models"][model]["metrics"]["NDCG@10"],
                            rel_tol=1e-9, abs_tol=1e-12)
    for b in chart["bars"]:
        assert b["label"] == fmt(b["value"])


def test_training_and_attention_charts(evaluated):
    training = evaluated["data"]["charts"]["training"]
    assert [t["model"] for t in training] == ["sasrec"]
    t = training[0]
    assert t["metric"] == "NDCG@10" and len(t["validation"]) >= 1 and len(t["loss"]) >= 1
    assert all(math.isfinite(x) for x in t["loss"])
    attention = evaluated["data"]["charts"]["attention"]
    assert [a["model"] for a in attention] == ["sasrec"]
    assert 1 <= len(attention[0]["examples"]) <= 3
    assert attention[0]["layers"] == 2


def test_sampled_metrics_report(tmp_path, small_synthetic):
    """Sampled metrics are labelled as such; no coverage chart (they have none)."""
    from attnrec.models import MostPopular
    from attnrec.pipeline import evaluate_models, make_split

    split = make_split(small_synthetic.to_sequences(), "loo")
    runs = evaluate_models({"pop": MostPopular()}, split, ks=(10,), sampled_negatives=50)
    path = write_report(tmp_path / "r", runs, split, ks=(10,))
    html = path.read_text(encoding="utf-8")
    assert "SAMPLED" in html[: html.index("metrics-table")]
    page = _Page()
    page.feed(html)
    data = json.loads(page.data_json)
    assert "popularity" not in data["charts"]
    assert data["models"]["pop"]["metrics"] == runs[0].result.metrics
    assert not (tmp_path / "r" / "popularity.png").exists()
    assert re.search(r"NDCG@10 \(sampled, 50 negatives\)", html)


def test_attention_heatmaps_blank_the_upper_triangle_only_for_causal_models(tmp_path, small_synthetic,
                                                                             monkeypatch):
    """SASRec's maps are causal (upper triangle unseen: blank); BERT4Rec's are bidirectional (drawn)."""
    import numpy as np
    from matplotlib.axes import Axes

    from attnrec.models import BERT4Rec, SASRec
    from attnrec.pipeline import evaluate_models, make_split

    drawn: list[np.ndarray] = []
    real_imshow = Axes.imshow
    monkeypatch.setattr(Axes, "imshow", lambda self, X, **kw: (drawn.append(np.asarray(X)),
                                                               real_imshow(self, X, **kw))[1])
    split = make_split(small_synthetic.to_sequences(), "loo")
    small = dict(epochs=1, d_model=16, n_layers=1, n_heads=1, max_len=12, num_threads=1)
    for model, causal in ((SASRec(**small), True), (BERT4Rec(**small), False)):
        drawn.clear()
        runs = evaluate_models({model.model_name: model}, split, ks=(10,))
        write_report(tmp_path / model.model_name, runs, split, ks=(10,))
        page = _Page()
        page.feed((tmp_path / model.model_name / "report.html").read_text(encoding="utf-8"))
        chart = json.loads(page.data_json)["charts"]["attention"][0]
        assert chart["causal"] is causal
        assert drawn and all(w.shape[0] == w.shape[1] >= 2 for w in drawn)
        upper = [w[np.triu_indices(len(w), 1)] for w in drawn]
        if causal:
            assert all(np.isnan(u).all() for u in upper)
        else:
            assert all(np.isfinite(u).all() for u in upper) and any((u > 0).any() for u in upper)


def test_report_states_the_privacy_guarantee_of_each_model(tmp_path, small_synthetic):
    """A DP-trained model's column names epsilon, delta, accountant, sampling rate, clip, noise."""
    from attnrec.models import MostPopular, SASRec
    from attnrec.pipeline import evaluate_models, make_split

    split = make_split(small_synthetic.to_sequences(), "loo")
    private = SASRec(epochs=1, d_model=16, n_layers=1, n_heads=1, max_len=12, num_threads=1,
                     privacy_epsilon=4.0)
    runs = evaluate_models({"pop": MostPopular(), "dp": private}, split, ks=(10,))
    html = write_report(tmp_path / "r", runs, split, ks=(10,)).read_text(encoding="utf-8")
    cells = re.findall(r"<td class='privacy'>([^<]*)</td>", html)
    p = private.privacy_guarantee()
    assert cells[0] == "not differentially private"
    assert f"epsilon {p['epsilon']:.4f} (target 4.0)" in cells[1] and p["epsilon"] <= 4.0
    for text in (f"delta {p['delta']:.2e}", "RDP accountant", f"sampling rate {p['sample_rate']:.4f}",
                 f"clipping norm {p['max_grad_norm']}", f"noise multiplier {p['noise_multiplier']:.4f}"):
        assert text in cells[1], text
