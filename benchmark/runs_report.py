"""Dataset pages of the report: one table per evaluation protocol, seeds aggregated, compute beside quality.

For each dataset and resolution the records are grouped by the protocol they were measured
under (``table_protocol``: the evaluated step, sampler and steps, cfg scale and guided
channels, samples, the reference and Inception weights actually used, and the whole training
recipe except the method, its options, the size and the seed). Each group is one table, its
protocol spelled out above it; rows are method x size (x options where a table holds several).
A cell with several seeds shows mean ± sample std (n = records); with one, the value and its
bootstrap 95% interval over the generated samples. A per-record table below lists every
record, so nothing measured is hidden and every record appears in exactly one table.

Published numbers (``results/published/<table>.csv`` with ``<table>.protocol.json``, whose
``match`` lists what a measured record must equal) sit beside a measured row only in the
table whose protocol matches; otherwise they have a table of their own. The table matching
the paper's protocol comes first.

Plots compare like with like: FID against training step joins only evaluations of one
training run under one evaluation protocol; FID against training compute has one line per
model within one protocol (the step aside); the loss plot shows the diffusion loss of every
method and, in its own panel, auxiliary losses.
"""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

import methods
from benchmark.identity import spec_hash
from benchmark.plugins import load_plugins
from benchmark.plots import PNG_META, pyplot
SIZE_ORDER = ("S", "B", "L", "XL", "debug")
MINUS = "\u2212"
DASH = "\u2014"

# (column header, metric key, decimals, has a bootstrap interval)
MAIN_METRICS = (("FID", "fid", 2, True), ("IS", "inception_score", 2, False), ("Precision", "precision", 2, True),
                ("Recall", "recall", 2, True))
DETAIL_METRICS = (("KID", "kid", 4), ("sFID", "sfid", 2), ("clean-FID", "fid_clean", 2))


# ------------------------------------------------------------------ formatting


def model_label(method: str, size: str, patch_size: int | None = 2) -> str:
    """``Switch-DiT-XL`` (``/4`` added for another patch): the method's display name from its spec."""
    load_plugins()
    label = f"{methods.display_name(method)}-{size}"
    return label if patch_size in (None, 2) else f"{label}/{patch_size}"


def method_rank(method: str) -> int:
    """Methods in registration order (the baseline first); unknown ones after them."""
    names = methods.METHODS.names()
    return names.index(method) if method in names else len(names)


def _order_key(method: str, size: str) -> tuple:
    s = SIZE_ORDER.index(size) if size in SIZE_ORDER else len(SIZE_ORDER)
    return (s, size, method_rank(method), method)


def num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def fmt(value: float | None, decimals: int) -> str:
    return "n/a" if value is None else f"{value:.{decimals}f}".replace("-", MINUS)


def fmt_signed(value: float, decimals: int) -> str:
    text = f"{abs(value):.{decimals}f}"
    if float(text) == 0:
        return f"\u00b1{text}"
    return f"+{text}" if value > 0 else f"{MINUS}{text}"


def count_label(n: int) -> str:
    return f"{n // 1000}K" if n >= 1000 and n % 1000 == 0 else str(n)


def cell_text(measured: float | None, published: float | None, decimals: int, *, has_record: bool = True) -> str:
    """``27.10 (pub 27.96, Δ −0.86)``; ``— (pub 27.96)`` when not measured; ``n/a`` when unavailable."""
    if not has_record:
        return DASH if published is None else f"{DASH} (pub {fmt(published, decimals)})"
    if published is None:
        return fmt(measured, decimals)
    if measured is None:
        return f"n/a (pub {fmt(published, decimals)})"
    return f"{fmt(measured, decimals)} (pub {fmt(published, decimals)}, \u0394 {fmt_signed(measured - published, decimals)})"


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    return pd.DataFrame(rows, columns=columns).to_markdown(index=False, disable_numparse=True)


def _rel(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target, start)).as_posix()


def _flops(value: float | None) -> str:
    if value is None:
        return "n/a"
    exp = int(math.floor(math.log10(value))) if value > 0 else 0
    return f"{value / 10 ** exp:.2f}e{exp}"


# ------------------------------------------------------------------ aggregation (pure)


def aggregate(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample standard deviation with ddof=1, n) of the finite values; std None for n < 2."""
    vals = [v for v in (num(x) for x in values) if v is not None]
    n = len(vals)
    if not n:
        return None, None, 0
    mean = sum(vals) / n
    if n < 2:
        return mean, None, n
    var = sum((v - mean) ** 2 for v in vals) / (n - 1)
    return mean, math.sqrt(var), n


def interval_text(value: float | None, interval: Any, decimals: int) -> str:
    """``24.03 [21.12, 27.40]`` with a bootstrap interval, else the value alone."""
    if value is None:
        return "n/a"
    if isinstance(interval, (list, tuple)) and len(interval) == 2 and all(num(x) is not None for x in interval):
        return f"{fmt(value, decimals)} [{fmt(float(interval[0]), decimals)}, {fmt(float(interval[1]), decimals)}]"
    return fmt(value, decimals)


def measured_text(records: list[dict], metric: str, decimals: int, with_interval: bool) -> str:
    mean, std, n = aggregate(r["metrics"].get(metric) for r in records)
    if n == 0:
        return "n/a"
    if len(records) == 1:
        ci = records[0]["metrics"].get(f"{metric}_ci95") if with_interval else None
        return interval_text(mean, ci, decimals)
    if std is None:  # several records, one with a value
        return f"{fmt(mean, decimals)} (n={n})"
    return f"{fmt(mean, decimals)} \u00b1 {fmt(std, decimals)} (n={n})"


# ------------------------------------------------------------------ protocols


def _train(record: dict) -> dict:
    return record["identity"].get("train") or {}


def view(record: dict) -> dict:
    """The fields a protocol is judged on, as one nested dict (what ``match`` paths address)."""
    ev = record["identity"]["eval"]
    sampling = ev["sampling"]
    reference = dict(ev["reference"]) if isinstance(ev["reference"], dict) else {"value": ev["reference"]}
    return {"checkpoint_step": sampling["checkpoint"].get("step"), "train": _train(record),
            "sample": sampling["sample"], "num_fid_samples": ev["num_fid_samples"], "reference": reference,
            "evaluation": record.get("evaluation", {})}


def _lookup(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return KeyError
        tree = tree[part]
    return tree


def matches(record: dict, match: dict) -> bool:
    """True when every ``match`` path of the record's view equals the given value."""
    v = view(record)
    for path, want in match.items():
        got = _lookup(v, path)
        if got is KeyError:
            return False
        if isinstance(want, (int, float)) and isinstance(got, (int, float)) and not isinstance(got, bool):
            if float(want) != float(got):
                return False
        elif got != want:
            return False
    return True


def table_protocol(record: dict, *, with_step: bool = True) -> dict:
    """What two records must share to sit in one table (see the module docstring)."""
    ev = record["identity"]["eval"]
    sampling = ev["sampling"]
    train = {k: v for k, v in _train(record).items() if k not in ("method", "size", "seed")}
    if "train" in train:
        train["train"] = {k: v for k, v in train["train"].items() if k != "iterations"}
    if "model" in train:
        train["model"] = {k: v for k, v in train["model"].items() if k != "patch_size"}
    evaluation = record.get("evaluation", {})
    proto = {
        "sample": {k: v for k, v in sampling["sample"].items() if k != "per_proc_batch_size"},
        "diffusion": sampling["diffusion"], "autoencoder": sampling["autoencoder"],
        "num_fid_samples": ev["num_fid_samples"],
        "reference": evaluation.get("reference_key", evaluation.get("reference")),
        "weights_sha256": evaluation.get("weights_sha256"),
        "train": train,
        "external": "file" in sampling["checkpoint"],
    }
    if with_step:
        proto["step"] = sampling["checkpoint"].get("step")
    return proto


def row_key(record: dict) -> tuple:
    options = (_train(record).get("method") or {}).get("options") or \
        record["identity"]["eval"]["sampling"]["checkpoint"].get("model", {}).get("options") or {}
    return (record["method"], record["size"], record.get("patch_size", 2), json.dumps(options, sort_keys=True))


def _row_order(key: tuple) -> tuple:
    return (_order_key(key[0], key[1]), key[2], key[3])


def protocol_text(rec: dict) -> str:
    """The protocol of ``rec``'s table in words."""
    ev = rec["identity"]["eval"]
    s = ev["sampling"]["sample"]
    train = _train(rec)
    tr, diffusion = train.get("train", {}), ev["sampling"]["diffusion"]
    evaluation = rec.get("evaluation", {})
    guided = "all channels" if s.get("guidance_channels") is None else f"first {s['guidance_channels']} channels"
    weights = Path(str(evaluation.get("weights", ""))).name
    parts = [
        f"FID-{count_label(int(ev['num_fid_samples']))} against {evaluation.get('reference', 'n/a')}",
        f"Inception weights {weights} (sha256 {str(evaluation.get('weights_sha256', ''))[:12]})",
        f"{s['sampler']} {s['steps']} steps" + (f", eta {s['eta']}" if s["sampler"] == "ddim" and s.get("eta") else ""),
        f"cfg {s['cfg_scale']} on {guided}" if float(s["cfg_scale"]) != 1.0 else "no guidance",
        "EMA weights" if s.get("use_ema") else "raw weights",
        f"checkpoint at step {rec['iterations']:,}" if rec.get("iterations") is not None else "outside checkpoint",
    ]
    if train:
        lw = train.get("loss_weight", {})
        lw_text = lw.get("name", "?") + "".join(f" {k}={v}" for k, v in sorted(lw.items()) if k != "name")
        ae = train.get("autoencoder", {})
        data = train.get("data", {})
        parts += [
            f"training: global batch {tr.get('global_batch_size')}, lr {tr.get('lr')}, EMA {tr.get('ema_decay')}, "
            f"precision {tr.get('precision')}, {diffusion.get('noise_schedule')} schedule over "
            f"{diffusion.get('num_timesteps')} steps, loss weighting {lw_text}, "
            f"{'pixel space' if ae.get('name') == 'none' else ae.get('name') + '-' + str(ae.get('variant'))}"
            + (f", latents {data['latents']}" if data.get("latents") else "")
            + (", random flips" if data.get("flip") else "")]
    if rec.get("recipe"):
        parts.append(f"recipe {rec['recipe']}")
    return "; ".join(parts) + "."


# ------------------------------------------------------------------ published numbers


def load_published(results_dir: str | os.PathLike) -> list[dict]:
    """Each published table: its rows keyed (method, size, patch), metadata, and its protocol ``match``."""
    tables = []
    for path in sorted((Path(results_dir) / "published").glob("*.csv")):
        meta = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("#") and ":" in line:
                key, _, value = line[1:].partition(":")
                meta[key.strip()] = value.strip()
        proto_path = path.with_suffix(".protocol.json")
        protocol = json.loads(proto_path.read_text(encoding="utf-8")) if proto_path.is_file() else {}
        frame = pd.read_csv(path, comment="#")
        rows = {}
        for row in frame.to_dict("records"):
            rows[(str(row["dataset"]), int(row["image_size"]), str(row["method"]), str(row["size"]),
                  int(row.get("patch_size", 2)))] = row
        tables.append({"file": path.name, "meta": meta, "protocol": protocol, "rows": rows})
    return tables


# ------------------------------------------------------------------ plots


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata=PNG_META)


def line_plot(series: dict[str, list[tuple[float, float]]], path: Path, xlabel: str, ylabel: str, *,
              marker: str | None = None, lw: float = 1.2, log_x: bool = False, log_y: bool = False,
              title: str = "") -> Path:
    """One labelled line per series, written to ``path``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for label, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, lw=lw, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    xs = [p[0] for pts in series.values() for p in pts if p[0] > 0]
    if log_x and xs and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
    elif log_x:  # under one decade a log axis has only crowded minor labels
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    if log_y:
        ax.set_yscale("log")
    if title:
        ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def _read_log(path: Path) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def loss_series(records: list[dict], results_dir: Path) -> tuple[dict[str, list], dict[str, list]]:
    """(diffusion loss per run, auxiliary losses per run and name): never summed into one quantity."""
    main: dict[str, list] = {}
    aux: dict[str, list] = {}
    for rec in records:
        log = rec.get("artifacts", {}).get("metrics_log")
        rows = _read_log(results_dir / log) if log else []
        label = f"{model_label(rec['method'], rec['size'], rec.get('patch_size'))} s{rec['seed']}"
        pts = [(r["step"], r["loss"]) for r in rows if num(r.get("loss")) is not None]
        if pts:
            main[label] = pts
        for key in sorted({k for r in rows for k in r if k.startswith("aux_")}):
            aux[f"{label}: {key[len('aux_'):]}"] = [(r["step"], r[key]) for r in rows if num(r.get(key)) is not None]
    return main, aux


def plot_losses(records: list[dict], results_dir: Path, path: Path) -> Path | None:
    """Diffusion loss of every run (left); auxiliary losses, labelled, in their own panel (right)."""
    main, aux = loss_series(records, results_dir)
    if not main:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2 if aux else 1, figsize=(10 if aux else 6, 3.6), dpi=100, squeeze=False)
    panels = [(axes[0][0], main, "diffusion loss (every method)")]
    if aux:
        panels.append((axes[0][1], aux, "auxiliary losses"))
    for ax, series, ylabel in panels:
        for label, pts in series.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2, label=label)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if all(p[1] > 0 for pts in main.values() for p in pts):
        axes[0][0].set_yscale("log")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def fid_step_series(family: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """FID against step, one series per training run (records of one evaluation protocol, step aside)."""
    series: dict[str, list] = {}
    for rec in family:
        fid = num(rec["metrics"].get("fid"))
        if fid is None or rec.get("iterations") is None:
            continue
        label = f"{model_label(rec['method'], rec['size'], rec.get('patch_size'))} s{rec['seed']} {rec['run_id'][-10:]}"
        series.setdefault(label, []).append((rec["iterations"], fid))
    return {k: sorted(v) for k, v in sorted(series.items())}


def fid_compute_series(family: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """FID (mean over seeds) against training FLOPs, one series per model."""
    series: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for rec in family:
        fid, flops = num(rec["metrics"].get("fid")), num(rec.get("compute", {}).get("train_flops"))
        if fid is not None and flops is not None:
            series[row_key(rec)][flops].append(fid)
    # Models in the tables' order (sizes, then methods as registered), so colours follow the loss plot.
    return {_options_label(k, False): sorted((f, sum(v) / len(v)) for f, v in series[k].items())
            for k in sorted(series, key=_row_order)}


# ------------------------------------------------------------------ page


def _groups(records: list[dict], **kw) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        out[spec_hash(table_protocol(rec, **kw))].append(rec)
    return out


def _published_for(tables: list[dict], dataset: str, image_size: int) -> list[dict]:
    return [t for t in tables if any(k[0] == dataset and k[1] == image_size for k in t["rows"])]


def _options_label(key: tuple, shown: bool) -> str:
    label = model_label(key[0], key[1], key[2])
    options = json.loads(key[3])
    if shown and options:
        label += " (" + ", ".join(f"{k}={v}" for k, v in sorted(options.items())) + ")"
    return label


def _main_table(recs: list[dict], published: dict | None, dataset: str, image_size: int) -> tuple[str, list[str]]:
    rows_by: dict[tuple, list[dict]] = defaultdict(list)
    for rec in recs:
        rows_by[row_key(rec)].append(rec)
    pub_rows = {}
    if published is not None:
        for (d, r, m, s, p), row in published["rows"].items():
            if d == dataset and r == image_size:
                pub_rows[(m, s, p)] = row
    keys = set(rows_by)
    measured_models = {(k[0], k[1], k[2]) for k in keys}
    for (m, s, p) in pub_rows:
        if (m, s, p) not in measured_models:
            keys.add((m, s, p, "{}"))
    several = defaultdict(set)
    for k in keys:
        several[(k[0], k[1], k[2])].add(k[3])
    fid_header = f"FID-{count_label(int(recs[0]['identity']['eval']['num_fid_samples']))}" if recs else "FID-50K"
    columns = ["Model", fid_header, "IS", "Precision", "Recall", "Params (M)", "GFLOPs/img", "Train FLOPs",
               "Device-hours", "Seeds"]
    rows = []
    for key in sorted(keys, key=_row_order):
        group = rows_by.get(key, [])
        pub = pub_rows.get((key[0], key[1], key[2])) if published is not None else None
        row = {"Model": _options_label(key, len(several[(key[0], key[1], key[2])]) > 1)}
        for (header, metric, dec, ci), col in zip(MAIN_METRICS, columns[1:5]):
            text = measured_text(group, metric, dec, ci) if group else None
            if pub is not None:
                mean = aggregate(r["metrics"].get(metric) for r in group)[0] if group else None
                pub_value = num(pub.get(metric))
                text = cell_text(mean, pub_value, dec, has_record=bool(group)) if len(group) <= 1 else \
                    f"{text} (pub {fmt(pub_value, dec)})"
            row[col] = text if text is not None else DASH
        comp = [r.get("compute", {}) for r in group]
        row["Params (M)"] = fmt(aggregate(c.get("parameters") for c in comp)[0] / 1e6, 2) if group else DASH
        row["GFLOPs/img"] = fmt(aggregate(c.get("forward_flops_per_image") for c in comp)[0] / 1e9, 3) \
            if group else DASH
        flops = aggregate(c.get("train_flops") for c in comp)[0]
        row["Train FLOPs"] = _flops(flops) if flops is not None else (DASH if not group else "n/a")
        hours = aggregate(c.get("device_hours") for c in comp)[0]
        kinds = sorted({str(c.get("device_type")) for c in comp if c.get("device_type")})
        row["Device-hours"] = (f"{hours:.3g} ({'/'.join(kinds)})" if hours is not None else "n/a") if group else DASH
        row["Seeds"] = ", ".join(str(s) for s in sorted({r["seed"] for r in group})) if group else DASH
        rows.append(row)
    return markdown_table(rows, columns), [str(k) for k in keys]


def _detail_table(recs: list[dict]) -> str:
    columns = ["Model", "Seed", "FID [95% CI]", "Precision [95% CI]", "Recall [95% CI]", "KID", "sFID", "clean-FID",
               "Record"]
    rows = []
    for rec in sorted(recs, key=lambda r: (_row_order(row_key(r)), r["seed"], r["run_id"], r["eval_id"])):
        m = rec["metrics"]
        row = {"Model": model_label(rec["method"], rec["size"], rec.get("patch_size")), "Seed": str(rec["seed"]),
               "FID [95% CI]": interval_text(num(m.get("fid")), m.get("fid_ci95"), 2),
               "Precision [95% CI]": interval_text(num(m.get("precision")), m.get("precision_ci95"), 2),
               "Recall [95% CI]": interval_text(num(m.get("recall")), m.get("recall_ci95"), 2)}
        for header, metric, dec in DETAIL_METRICS:
            row[header] = fmt(num(m.get(metric)), dec)
        row["Record"] = f"`{rec['run_id']}/{rec['eval_id']}`"
        rows.append(row)
    return markdown_table(rows, columns)


def _equal_compute(family: list[dict]) -> str | None:
    """FID each model reached within a compute budget: the best-trained checkpoint at or under it."""
    points: dict[tuple, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for rec in family:
        flops = num(rec.get("compute", {}).get("train_flops"))
        if flops is not None and num(rec["metrics"].get("fid")) is not None:
            points[row_key(rec)][flops].append(rec)
    if len(points) < 2:
        return None
    levels = sorted({max(p) for p in points.values()})[:6]
    columns = ["Model"] + [f"\u2264 {_flops(level)} FLOPs" for level in levels]
    rows = []
    for key in sorted(points, key=_row_order):
        row = {"Model": _options_label(key, False)}
        for level, col in zip(levels, columns[1:]):
            under = [f for f in points[key] if f <= level * (1 + 1e-9)]
            if not under:
                row[col] = DASH
                continue
            best = points[key][max(under)]
            mean = aggregate(r["metrics"]["fid"] for r in best)[0]
            row[col] = f"{fmt(mean, 2)} (step {best[0]['iterations']:,})"
        rows.append(row)
    return markdown_table(rows, columns)


def _fid_vs_steps(family: list[dict], path: Path) -> Path | None:
    series = fid_step_series(family)
    if not any(len(v) > 1 for v in series.values()):
        return None
    return line_plot(series, path, "training step", "FID", marker="o", lw=1.4,
                     title="one line per training run, one evaluation protocol")


def _fid_vs_compute(family: list[dict], path: Path) -> Path | None:
    series = fid_compute_series(family)
    if sum(len(v) for v in series.values()) < 2:
        return None
    return line_plot(series, path, "training compute (FLOPs, 3 x forward x batch x steps)", "FID", marker="o",
                     lw=1.4, log_x=True, title="mean over seeds; one evaluation protocol")


def _artifact_lines(recs: list[dict], results_dir: Path, reports_dir: Path) -> list[str]:
    lines = []
    for rec in sorted(recs, key=lambda r: (_row_order(row_key(r)), r["seed"], r["run_id"])):
        arts = rec.get("artifacts", {})
        links = [f"[{name.replace('_', ' ')}]({_rel(results_dir / arts[name], reports_dir)})"
                 for name in ("sample_grid", "loss_curve", "metrics_log") if arts.get(name)]
        links += [f"[{name}]({_rel(results_dir / p, reports_dir)})" for name, p in sorted((arts.get("diagnostics") or {}).items())]
        if links:
            label = model_label(rec["method"], rec["size"], rec.get("patch_size"))
            lines.append(f"- {label} seed {rec['seed']} (`{rec['run_id']}`): " + " \u00b7 ".join(links))
    return lines


def _unavailable(records: list[dict]) -> list[str]:
    notes = set()
    for rec in records:
        for key, value in rec.get("metrics", {}).items():
            if key.endswith("_unavailable") and value:
                notes.add(f"- {key[: -len('_unavailable')]}: {value}")
    return sorted(notes)


READING = ("How to read: each table holds records measured under one protocol (spelled out above it). With one "
           "seed a cell shows the value and its bootstrap 95% interval over the generated samples; with several, "
           "mean \u00b1 standard deviation over them (n = records). Published numbers appear beside measured ones "
           "only under the published protocol. Params and GFLOPs/img (one forward pass of one image) are counted; "
           "training FLOPs are 3 x forward x global batch x steps.")


def dataset_page(dataset: str, image_size: int, records: list[dict], published: list[dict], results_dir: Path,
                 reports_dir: Path) -> tuple[str, list[Path]]:
    """Markdown for one dataset/resolution and the plots it references."""
    slug = f"{dataset}-{image_size}"
    tables = _published_for(published, dataset, image_size)
    groups = _groups(records)
    pub_of: dict[str, dict] = {}
    for gid, recs in groups.items():
        for table in tables:
            match = table["protocol"].get("match")
            if match and all(matches(r, match) for r in recs):
                pub_of[gid] = table
                break

    def order(gid: str) -> tuple:
        rec = groups[gid][0]
        return (gid not in pub_of, -int(rec["identity"]["eval"]["num_fid_samples"]), -(rec.get("iterations") or 0), gid)

    lines = [f"# {dataset} {image_size}x{image_size}", "", READING, ""]
    written: list[Path] = []
    for n, gid in enumerate(sorted(groups, key=order), start=1):
        recs = groups[gid]
        table = pub_of.get(gid)
        title = f"## Protocol {n}: FID-{count_label(int(recs[0]['identity']['eval']['num_fid_samples']))}"
        title += f", step {recs[0]['iterations']:,}" if recs[0].get("iterations") is not None else ""
        title += f" (the published protocol of `{table['file']}`)" if table else ""
        main, _ = _main_table(recs, table, dataset, image_size)
        lines += [title, "", protocol_text(recs[0]), "", main, ""]
        if table:
            lines += [f"Published: {table['meta'].get('source', table['file'])}.", ""]
        lines += [f"Every record of this protocol ({len(recs)}):", "", _detail_table(recs), ""]
        notes = _unavailable(recs)
        if notes:
            lines += ["Unavailable metrics:", "", *notes, ""]
    # Published tables no measured protocol matched: shown on their own, with their protocol.
    for table in tables:
        if table in pub_of.values():
            continue
        lines += [f"## Published: `{table['file']}` (no record here was measured under its protocol)", "",
                  f"Protocol: {table['protocol'].get('summary') or table['meta'].get('protocol', 'n/a')}", "",
                  _main_table([], table, dataset, image_size)[0], "",
                  f"Source: {table['meta'].get('source', 'n/a')}.", ""]

    families = _groups(records, with_step=False)
    plots: list[tuple[str, Path]] = []
    for gid in sorted(families):
        family = families[gid]
        tag = f"{slug}-{gid}"
        equal = _equal_compute(family)
        if equal:
            lines += [f"## FID at equal training compute (evaluation protocol {gid})", "",
                      "Each cell: the FID of the model's most-trained checkpoint within the budget (mean over seeds).",
                      "", equal, ""]
        for title, path in (("FID over training steps", _fid_vs_steps(family, reports_dir / f"{tag}-fid-vs-steps.png")),
                            ("FID against training compute",
                             _fid_vs_compute(family, reports_dir / f"{tag}-fid-vs-compute.png"))):
            if path:
                plots.append((f"{title} (evaluation protocol {gid})", path))
    latest_per_run = {}
    for rec in sorted(records, key=lambda r: (r.get("iterations") or 0, r["eval_id"])):
        latest_per_run[rec["run_id"]] = rec
    loss = plot_losses([latest_per_run[k] for k in sorted(latest_per_run)], results_dir, reports_dir / f"{slug}-loss.png")
    if loss:
        plots.append(("Training losses: diffusion loss of every method, auxiliary losses apart", loss))
    if plots:
        lines += ["## Plots", ""]
        for title, path in plots:
            lines += [f"![{title}]({_rel(path, reports_dir)})", ""]
            written.append(path)
    arts = _artifact_lines(records, results_dir, reports_dir)
    if arts:
        lines += ["## Samples and diagnostics", "", *arts, ""]
    if not records and not tables:
        lines += ["No records.", ""]
    return "\n".join(lines).rstrip() + "\n", written
