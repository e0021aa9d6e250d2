"""The ``attnrec`` command line. Thin: parsing and printing only; the work is in attnrec.pipeline."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

app = typer.Typer(
    help="attnrec: attention-based recommendation, from interaction logs to a live service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Inspect interaction files.", no_args_is_help=True)
datasets_app = typer.Typer(help="Download public datasets into the local cache.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(datasets_app, name="datasets")

console = Console(width=200) if not sys.stdout.isatty() else Console()
err_console = Console(stderr=True)


@app.callback()
def _main(verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="-v: progress logs, -vv: debug.")) -> None:
    logging.basicConfig(
        level={0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG),
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
    )


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def _guard(fn, *args, **kwargs):
    """Turn expected errors (bad files, bad options) into one clear line, not a traceback."""
    from attnrec.data.download import DownloadError
    from attnrec.data.errors import DataError

    try:
        return fn(*args, **kwargs)
    except (DataError, DownloadError, FileNotFoundError, KeyError, ValueError, TypeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        _fail(str(msg))


# ---- shared data options ------------------------------------------------------------------
@dataclass
class DataOptions:
    """The interaction file and how to read and clean it: one definition for every command.

    Each field's metadata holds its Typer parameter; :func:`data_command` adds them
    to a command, which receives one ``data: DataOptions``.
    """

    path: Path = field(metadata={"param": typer.Argument(
        ..., help="Interactions: CSV/TSV, Parquet, JSON Lines, sequence-per-line .txt or RecBole .inter.")})
    fmt: str = field(default="auto", metadata={"param": typer.Option(
        "auto", "--format", help="csv, tsv, parquet, jsonl, json, sequence, recbole (default: from extension).")})
    user_col: Optional[str] = field(default=None, metadata={"param": typer.Option(
        None, "--user-col", help="User id column (default user_id).")})
    item_col: Optional[str] = field(default=None, metadata={"param": typer.Option(
        None, "--item-col", help="Item id column (default item_id).")})
    time_col: Optional[str] = field(default=None, metadata={"param": typer.Option(
        None, "--time-col", help="Timestamp column (default timestamp; '' for none).")})
    rating_col: Optional[str] = field(default=None, metadata={"param": typer.Option(
        None, "--rating-col", help="Rating column, if any.")})
    event_col: Optional[str] = field(default=None, metadata={"param": typer.Option(
        None, "--event-col", help="Event type column, if any.")})
    rating_threshold: Optional[float] = field(default=None, metadata={"param": typer.Option(
        None, "--rating-threshold", help="Keep interactions with rating >= this (explicit -> implicit).")})
    min_user: int = field(default=0, metadata={"param": typer.Option(
        0, "--min-user", help="Iterated k-core: minimum interactions per user.")})
    min_item: int = field(default=0, metadata={"param": typer.Option(
        0, "--min-item", help="Iterated k-core: minimum interactions per item.")})
    dedupe: str = field(default="none", metadata={"param": typer.Option(
        "none", "--dedupe", help="Repeated (user, item): none, first or last.")})

    @property
    def filtered(self) -> bool:
        return self.rating_threshold is not None or bool(self.min_user or self.min_item) or self.dedupe != "none"

    def spec(self):
        """The :class:`attnrec.pipeline.DataSpec` these options describe."""
        from attnrec.data.columns import ColumnMap
        from attnrec.data.preprocess import PreprocessConfig
        from attnrec.pipeline import DataSpec

        columns = None
        if any(c is not None for c in (self.user_col, self.item_col, self.time_col, self.rating_col, self.event_col)):
            columns = ColumnMap(
                user=self.user_col or "user_id",
                item=self.item_col or "item_id",
                timestamp=None if self.time_col == "" else (self.time_col or "timestamp"),
                rating=self.rating_col,
                event=self.event_col,
            )
        cfg = PreprocessConfig(
            dedupe=self.dedupe,
            rating_threshold=self.rating_threshold,
            min_user_interactions=self.min_user,
            min_item_interactions=self.min_item,
        )
        return DataSpec(self.path, self.fmt, columns, cfg)

    def load(self):
        """Read and clean the file; the load report goes to stderr, errors become one line."""
        data, report = _guard(self.spec().load)
        for line in report.summary().splitlines():
            err_console.print(f"[dim]{line}[/]")
        return data


def data_command(fn):
    """Give command ``fn(data: DataOptions, ...)`` the data file argument and options on the command line."""
    sig = inspect.signature(fn)
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for name, p in sig.parameters.items() if name != "data"]
    fields_ = fields(DataOptions)
    types = typing.get_type_hints(DataOptions)
    added = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.metadata["param"],
                               annotation=types[f.name]) for f in fields_]

    @functools.wraps(fn)
    def command(**kwargs):
        data = DataOptions(**{f.name: kwargs.pop(f.name) for f in fields_})
        return fn(data=data, **kwargs)

    command.__signature__ = sig.replace(parameters=added[:1] + own + added[1:])
    hints = typing.get_type_hints(fn)
    hints.pop("data", None)
    command.__annotations__ = {**hints, **types}
    del command.__wrapped__  # Typer must read the new signature, not fn's
    return command


SPLIT = typer.Option("loo", "--split", help="loo (leave-one-out) or temporal (global time cut-off).")
PROTOCOL = typer.Option(
    None, "--protocol",
    help="paper: select on validation, test that same model (no refit; what published figures use). "
         "refit (default): select on validation, refit on train+validation, then test (uses all data).",
)


# ---- data ---------------------------------------------------------------------------------
@data_app.command("stats")
@data_command
def data_stats(
    data: DataOptions,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Users, items, interactions, density and sequence-length percentiles of FILE."""
    from attnrec.data.preprocess import format_stats

    stats = data.load().stats()
    console.print_json(json.dumps(stats)) if as_json else console.print(format_stats(stats))


# ---- datasets -------------------------------------------------------------------------------
@datasets_app.command("list")
def datasets_list() -> None:
    """Datasets known to `attnrec datasets download`."""
    from attnrec.data.download import get_spec, known_datasets

    for name in known_datasets():
        spec = get_spec(name)
        console.print(f"{name:16} {getattr(spec, 'description', '')}")


@datasets_app.command("download")
def datasets_download(
    name: str = typer.Argument(..., help="Dataset name (see `attnrec datasets list`)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Cache directory (default $ATTNREC_CACHE or ~/.cache/attnrec)."),
    mirror: Optional[str] = typer.Option(None, help="Base URL of a mirror holding the same files."),
    force: bool = typer.Option(False, help="Download again even if cached."),
) -> None:
    """Download NAME, verify its checksum and convert it to interactions.csv."""
    from attnrec.data.download import download

    path = _guard(download, name, cache_dir=cache_dir, base_url=mirror, force=force)
    console.print(str(path))


# ---- train / evaluate / recommend ----------------------------------------------------------------
@app.command()
@data_command
def train(
    data: DataOptions,
    model: str = typer.Option(..., "--model", "-m", help="Model name, e.g. sasrec, bert4rec, ease, itemknn, pop."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle directory to write."),
    param: List[str] = typer.Option([], "--param", "-p", help="Hyperparameter key=value (repeatable)."),
    holdout: str = typer.Option(
        "last", help="last: hold out each user's last item (evaluable with `evaluate --bundle`); none: train on everything."
    ),
    split: str = SPLIT,
    protocol: Optional[str] = PROTOCOL,
    items: Optional[Path] = typer.Option(None, "--items", help="Item catalogue (CSV/TSV, Parquet or RecBole .item) to ship in the bundle."),
    chunked: bool = typer.Option(False, "--chunked", help="Build sequences in bounded memory (Parquet/CSV logs larger than RAM; no filters)."),
    dist_backend: str = typer.Option("auto", "--dist-backend", help="Under torchrun: gloo, nccl or auto (nccl when CUDA is available)."),
) -> None:
    """Train one model on FILE and save it as a bundle (under torchrun: DistributedDataParallel, rank 0 writes)."""
    from attnrec import distributed, pipeline

    if _guard(pipeline.check_holdout, holdout) == "none" and protocol is not None:
        _fail("--protocol needs a held-out test stage; --holdout none trains on everything")
    protocol = _guard(pipeline.check_protocol, protocol or pipeline.DEFAULT_PROTOCOL)
    params = _guard(pipeline.parse_params, param, [model])
    m = _guard(pipeline.build_model, model, params.get(model), progress=True)
    catalogue = _guard(pipeline.check_inputs, params, items)
    _guard(pipeline.check_outputs, [out])
    distributed.init_from_env(dist_backend)
    if chunked:
        from attnrec.data.chunked import load_sequences_chunked

        if data.filtered:
            _fail("--chunked builds sequences without filters; drop --rating-threshold/--min-user/--min-item/--dedupe")
        sequences = _guard(load_sequences_chunked, data.path, data.spec().columns, data.fmt)
    else:
        sequences = data.load()
    info, s = _guard(pipeline.fit_bundle, m, sequences, holdout, split, protocol)
    info["data"] = str(data.path)
    if distributed.is_main():  # every rank holds the same weights; one evaluates and writes
        metrics = pipeline.bundle_metrics(m, protocol, s)
        info["world_size"] = distributed.world_size()
        pipeline.save_bundle(m, out, metrics=metrics, info=info, catalogue=catalogue)
        console.print(f"saved {model} bundle to {out} (fit {m.fit_seconds_:.1f}s)")
        _print_bundle_metrics(metrics)
    distributed.barrier()
    distributed.cleanup()


def _print_bundle_metrics(metrics: dict) -> None:
    if metrics["protocol"] == "none":
        console.print("[bold]protocol:[/] none (trained on every interaction; no held-out figures)")
        return
    console.print(f"[bold]protocol:[/] {metrics['protocol_description']}; {metrics['fitted_on']}")
    for stage in ("validation", "test"):
        if metrics[stage]:
            shown = {k: v for k, v in metrics[stage]["metrics"].items() if k.startswith(("HR@", "NDCG@"))}
            console.print(f"{stage} ({metrics['protocol']} protocol, {metrics[stage]['n_cases']} cases): "
                          + "  ".join(f"{k} {v:.4f}" for k, v in shown.items()), highlight=False)


@app.command()
@data_command
def evaluate(
    data: DataOptions,
    models: str = typer.Option("pop,ease", "--models", "-m", help="Comma-separated model names to train and compare."),
    param: List[str] = typer.Option([], "--param", "-p", help="key=value for every model that has it, or model.key=value."),
    bundle: List[Path] = typer.Option([], "--bundle", "-b", help="Also evaluate already-trained bundles (trained with --holdout last)."),
    split: str = SPLIT,
    protocol: Optional[str] = PROTOCOL,
    ks: str = typer.Option("5,10,20", "--ks", help="Cut-offs K."),
    include_history: bool = typer.Option(False, "--include-history", help="Do not exclude history items from the ranking (repeat-consumption domains)."),
    sampled: Optional[int] = typer.Option(None, "--sampled-negatives", help="SAMPLED metrics against N random negatives instead of full ranking (labelled as such)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write all metrics to this JSON file."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write an HTML report with PNG charts to this directory."),
    items: Optional[Path] = typer.Option(None, "--items", help="Item catalogue (CSV/TSV, Parquet or RecBole .item): names in the report."),
) -> None:
    """Compare models on the same split of FILE with full-ranking metrics (one table)."""
    from attnrec import pipeline
    from attnrec.evaluation import evaluate as _evaluate
    from attnrec.models.base import Recommender

    # everything the user named is read and checked before any model trains
    protocol = _guard(pipeline.check_protocol, protocol or pipeline.DEFAULT_PROTOCOL)
    cutoffs = _guard(lambda: [int(k) for k in ks.split(",") if k.strip()])
    names = [m.strip() for m in models.split(",") if m.strip()]
    params = _guard(pipeline.parse_params, param, names)
    built = {n: _guard(pipeline.build_model, n, params.get(n), progress=True) for n in names}
    catalogue = _guard(pipeline.check_inputs, params, items)
    _guard(pipeline.check_outputs, [report] if report else [], [json_out] if json_out else [])
    trained = [(b, _guard(Recommender.load, b)) for b in bundle]
    sequences = data.load()
    s = _guard(pipeline.make_split, sequences, split)
    for _, m in trained:
        _guard(pipeline.check_bundle_matches, m, s)
    runs = _guard(
        pipeline.evaluate_models, built, s, ks=cutoffs, exclude_history=not include_history, sampled_negatives=sampled,
        on_done=lambda r: err_console.print(f"[dim]{r.name}: fit {r.fit_seconds:.1f}s, evaluate {r.eval_seconds:.1f}s[/]"),
        progress=sys.stderr.isatty(), per_case=report is not None, protocol=protocol,
    )
    for b, m in trained:
        res = _evaluate(m, s.test, ks=cutoffs, exclude_history=not include_history, sampled_negatives=sampled)
        trained_protocol = m.bundle_info_.get("protocol", "unknown")
        how = m.bundle_metrics_.get("fitted_on", "as trained for the bundle")
        runs.append(pipeline.ModelRun(f"{b.name} ({m.model_name}, {trained_protocol})", m, res, 0.0, 0.0,
                                      trained_protocol, how))
    printed = pipeline.protocol_line(protocol, runs, s)
    console.print(f"[bold]protocol:[/] {printed}; {runs[0].result.n_cases if runs else 0} test cases")
    _print_table(runs)
    if json_out:
        json_out.write_text(json.dumps(pipeline.results_to_json(runs, protocol, s), indent=2, default=str))
    if report:
        from attnrec.report import write_report

        names = {i: e.name or i for i, e in catalogue.items()} if catalogue else None
        path = _guard(
            write_report, report, runs, s, protocol=printed, ks=cutoffs, exclude_history=not include_history,
            catalogue=names,
        )
        console.print(f"report: {path}")


TABLE_METRICS = ("HR@", "NDCG@", "MRR@10", "Recall@", "Coverage@10", "AvgPop@10")


def _print_table(runs, all_metrics: bool = False) -> None:
    """One row per model. Recall@K equals HR@K with one target, so it is shown only when it differs."""
    if not runs:
        return
    keys = list(runs[0].result.metrics)
    if not all_metrics:
        keys = [k for k in keys if k.startswith(TABLE_METRICS)]
        if all(r.result.metrics.get(k) == r.result.metrics.get("HR@" + k.split("@")[1]) for r in runs for k in keys if k.startswith("Recall@")):
            keys = [k for k in keys if not k.startswith("Recall@")]
    table = Table(show_header=True, header_style="bold")
    table.add_column("model")
    for k in keys:
        table.add_column(k, justify="right")
    table.add_column("fit s", justify="right")
    for r in runs:
        cells = [f"{r.result.metrics[k]:.4f}" if abs(r.result.metrics[k]) < 10 else f"{r.result.metrics[k]:.1f}" for k in keys]
        table.add_row(r.name, *cells, f"{r.fit_seconds:.1f}")
    console.print(table)
    groups: dict[str, list[str]] = {}
    for r in runs:
        groups.setdefault(f"{r.protocol} protocol: {r.fitted_on}", []).append(r.name)
    for how, names in groups.items():
        console.print(f"[dim]{', '.join(names)}: {how}[/]")


@app.command()
def recommend(
    bundle: Path = typer.Argument(..., help="A trained bundle directory."),
    users: Optional[str] = typer.Option(None, "--users", help="Comma-separated raw user ids (default: every user in the bundle)."),
    k: int = typer.Option(10, "-k", help="Recommendations per user."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="CSV file to write (default: standard output)."),
    include_history: bool = typer.Option(False, "--include-history", help="Allow items already in the user's history."),
    index: str = typer.Option(
        "auto", "--index",
        help="Retrieval for vector models: auto (exact scoring up to 100k items, IVF above), exact, hnsw or ivf (FAISS).",
    ),
) -> None:
    """Top-k per user as CSV `user,item,rank,score` in raw ids (rank starts at 1)."""
    from attnrec import pipeline
    from attnrec.models.base import Recommender

    m = _guard(Recommender.load, bundle)
    wanted = [u.strip() for u in users.split(",")] if users else None
    recs = _guard(pipeline.recommend_for_users, m, wanted, k=k, exclude_history=not include_history, index=index)
    if out is None:
        console.print("user,item,rank,score")
        for r in recs:
            console.print(f"{r.user},{r.item},{r.rank},{r.score:.6g}", highlight=False)
    else:
        n = pipeline.write_recommendations(recs, out)
        err_console.print(f"wrote {n} rows to {out}")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Where to write the demo data and bundle."),
    users: int = typer.Option(2000, "--users", help="Synthetic users to generate."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Generate the built-in synthetic shop, compare models, show explained recommendations."""
    from attnrec.demo import run_demo

    report = _guard(run_demo, out, n_users=users, seed=seed)
    console.rule("[bold]attnrec demo: synthetic shop with planted 'accessory after product' patterns")
    console.print(f"[bold]protocol:[/] {report.protocol}")
    _print_table(report.runs)
    console.print(f"best model by validation NDCG@10: [bold]{report.best}[/] "
                  f"({report.validation_ndcg[report.best]:.4f}), saved to {report.bundle}")
    console.print(
        f"planted pattern recovered: for users whose last item is a product, its accessory is in the "
        f"top-10 for {report.rule_hit_rate:.0%} of them"
    )
    for ex in report.examples:
        console.rule(f"user {ex.user}")
        console.print("recent history: " + " -> ".join(name for _, name in ex.history))
        for rank, (item, name, score) in enumerate(ex.recommendations, 1):
            mark = "  [green](planted accessory)[/]" if item == ex.planted_next else ""
            console.print(f"  {rank}. {name} [dim]({item}, score {score:.3f})[/]{mark}")
        if ex.because:
            console.print(
                "  because you viewed: " + ", ".join(f"{name} ({w:.0%})" for _, name, w in ex.because)
            )
    console.print(f"\nnext: attnrec serve --model {report.bundle} --dev")


# ---- continuous learning: the event store back into training (attnrec.continuous) ------------
events_app = typer.Typer(help="The service's stored events.", no_args_is_help=True)
app.add_typer(events_app, name="events")
DB_URL = typer.Option(..., "--db", help="The service's database URL (e.g. sqlite:///.attnrec/events.db).")
SERVICE_DIR = typer.Option(None, "--data-dir", help="The service's --data-dir (its secret.key; default .attnrec). ATTNREC_SECRET and ATTNREC_EVENT_TYPES are read as the service reads them.")


def _guard_store(fn, *args, **kwargs):
    """``_guard``, and a database that does not answer is one line too."""
    from attnrec.serving.store import StoreUnavailable

    try:
        return _guard(fn, *args, **kwargs)
    except StoreUnavailable as e:
        _fail(str(e))


@events_app.command("export")
def events_export(
    db: str = DB_URL,
    out: Path = typer.Option(..., "--out", "-o", help="File to write: .parquet or .csv."),
    positives_only: bool = typer.Option(False, "--positives-only", help="Leave out negative and exclude-only types (ATTNREC_EVENT_TYPES)."),
    data_dir: Optional[Path] = SERVICE_DIR,
) -> None:
    """Stream the stored events (deleted users left out) to a file `attnrec train` reads."""
    from attnrec.continuous import export_events, service_secret_and_types

    secret, types = _guard(service_secret_and_types, db, data_dir)
    counts = _guard_store(export_events, db, out, secret=secret, event_types=types, positives_only=positives_only)
    console.print(f"wrote {counts['written']} events to {out} (left out: {counts['not_positive']} not positive)")


@app.command()
def retrain(
    bundle: Path = typer.Option(..., "--bundle", help="The current bundle."),
    db: str = DB_URL,
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the new bundle (may be --bundle itself: replaced atomically)."),
    tolerance: float = typer.Option(0.01, "--tolerance", help="Write the new bundle unless its NDCG@10 is below the current one's by more than this."),
    warm_start: bool = typer.Option(False, "--warm-start", help="Fine-tune from the current weights instead of fitting from scratch."),
    warm_epochs: Optional[int] = typer.Option(None, "--warm-epochs", help="Epochs of a warm-start fine-tune (default: the bundle's)."),
    param: List[str] = typer.Option([], "--param", "-p", help="Override one of the bundle's hyperparameters, key=value."),
    threads: int = typer.Option(1, "--threads", help="Torch threads (keep serving responsive)."),
    data_dir: Optional[Path] = SERVICE_DIR,
) -> None:
    """Retrain BUNDLE on its histories + the stored events; write it only if not worse on held-out latest events."""
    from attnrec import continuous, pipeline

    params = {k: v for pair in param for k, v in [_guard(pipeline.parse_kv, pair)]}
    secret, types = _guard(continuous.service_secret_and_types, db, data_dir)
    res = _guard_store(continuous.retrain, bundle, db, out, tolerance=tolerance, warm_start=warm_start,
                 warm_epochs=warm_epochs, params=params, threads=threads, secret=secret, event_types=types)
    console.print(res.summary(), highlight=False)
    if not res.accepted:
        err_console.print(f"not written: {bundle} stays the current bundle")
        raise typer.Exit(code=1)
    console.print(f"wrote {res.written} (events through id {res.last_event_id}, fit {res.fit_seconds:.1f}s)")


INDEX_KINDS = ("auto", "exact", "hnsw", "ivf")


@app.command()
def serve(
    model: Path = typer.Option(..., "--model", help="Bundle directory to serve."),
    db: Optional[str] = typer.Option(None, "--db", help="Database URL (default: SQLite in --data-dir)."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Directory for the default SQLite database."),
    dev: bool = typer.Option(False, "--dev", help="Local development: allow write endpoints without an API key."),
    index: Optional[str] = typer.Option(
        None, "--index", help="Top-k retrieval: auto (exact up to 100k items, FAISS IVF above), exact, hnsw, ivf."),
    workers: int = typer.Option(1, "--workers", min=1,
                                help="Worker processes sharing the database (PostgreSQL for real traffic)."),
) -> None:
    """Serve a bundle over HTTP with live events and explanations (OpenAPI docs at /docs)."""
    if index is not None and index not in INDEX_KINDS:
        _fail(f"--index must be one of {', '.join(INDEX_KINDS)}, got {index!r}")
    try:
        from attnrec.serving import run
    except ImportError as e:
        _fail(f"the service needs the 'serve' extra: pip install 'attnrec[serve]' ({e})")
    _guard(run, model=model, db=db, host=host, port=port, data_dir=data_dir, dev=dev, index=index,
           workers=workers)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
