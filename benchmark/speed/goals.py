"""Speed goals and device peaks as data (``conf/speed/goals.json``) plus pure functions judging records.

Kernel goals are judged on the fused Triton kernel's fwd+bwd rows of a kernel record, per
shape; the step goal on the eager whole-step rows (built with default options) of DiT and
Switch-DiT of one size. Needs the standard library only, so the report can re-judge GPU
records with the current rules without importing torch or Triton.
"""
from __future__ import annotations

import functools
import json
import operator
from pathlib import Path

from conf import CONF_DIR

GOALS_FILE = CONF_DIR / "speed" / "goals.json"
OPS = {">=": operator.ge, "<=": operator.le}


@functools.lru_cache(maxsize=None)
def load(path: str | Path = GOALS_FILE) -> dict:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    for section in ("kernel_goals", "step_goals"):
        for name, goal in data[section].items():
            if goal.get("op") not in OPS:
                raise ValueError(f"{path}: goal {name} has op {goal.get('op')!r}; valid: {list(OPS)}")
    return data


def device_peaks(name: str, table: list[dict] | None = None) -> dict | None:
    """Peak figures of the first ``device_peaks`` entry whose ``match`` is part of ``name``."""
    for entry in load()["device_peaks"] if table is None else table:
        if entry["match"] in name:
            return {"matched": entry["match"], **{k: v for k, v in entry.items() if k != "match"}}
    return None


def judge(shape: str, goal: str, value: float, spec: dict) -> dict:
    return {"shape": shape, "goal": goal, "value": value, "target": f"{spec['op']} {spec['target']}",
            "passed": bool(OPS[spec["op"]](value, spec["target"]))}


def _find(results: list[dict], provider: str, shape: str, direction: str = "fwd+bwd") -> dict | None:
    for row in results:
        if row.get("provider") == provider and row.get("shape") == shape and row.get("direction") == direction:
            return row if "median_ms" in row else None
    return None


def _fastest_dense(record: dict, name: str) -> dict | None:
    """The dense_linear fwd+bwd row for ``name``'s rows, fastest over the routings.

    A dense linear does not depend on routing, so every routing of one (D, L, N, k) times the
    same work; the fastest of those is the reference (a slow outlier, e.g. clocks still
    ramping, must not make the fused kernel look better)."""
    shapes = {s["name"]: s for s in record.get("shapes", [])}
    if name not in shapes:
        return _find(record["results"], "dense_linear", name)
    key = lambda s: tuple(s.get(f) for f in ("d", "seq", "n", "k"))  # noqa: E731
    rows = [_find(record["results"], "dense_linear", other) for other, s in shapes.items() if key(s) == key(shapes[name])]
    rows = [r for r in rows if r]
    return min(rows, key=lambda r: r["median_ms"]) if rows else None


def _kernel_values(record: dict, name: str) -> dict[str, float]:
    """Each kernel goal's value at one shape, where its rows exist."""
    fused = _find(record["results"], "triton_fused", name)
    official = _find(record["results"], "official", name)
    dense = _fastest_dense(record, name)
    values = {}
    if fused and official:
        values["speedup_vs_official"] = official["median_ms"] / fused["median_ms"]
        if fused.get("extra_mem_mb") is not None and official.get("extra_mem_mb"):
            values["memory_vs_official"] = fused["extra_mem_mb"] / official["extra_mem_mb"]
    if fused and dense:
        values["throughput_vs_dense"] = dense["median_ms"] / fused["median_ms"]
    return values


def evaluate_goals(record: dict, shape_names=None, goals: dict | None = None) -> list[dict]:
    """Pass/fail of the kernel goals for the fused kernel, fwd+bwd, per shape."""
    goals = load()["kernel_goals"] if goals is None else goals
    out = []
    for name in shape_names or [s["name"] for s in record["shapes"]]:
        values = _kernel_values(record, name)
        if not values:
            out.append({"shape": name, "goal": "all", "value": None, "target": None, "passed": None,
                        "note": "fused, official or dense_linear did not run"})
        out += [judge(name, goal, values[goal], spec) for goal, spec in goals.items() if goal in values]
    return out


def step_goals(whole_step: dict | None, goals: dict | None = None) -> list[dict]:
    """Switch-DiT / DiT whole-step time per size where both ran.

    Rows built with other options (e.g. moe_backend=torch) or compiled are context: the
    goal is about the eager step of the default model."""
    spec = (load()["step_goals"] if goals is None else goals)["switch_dit_step_vs_dit"]
    rows = [r for r in (whole_step or {}).get("rows", [])
            if "median_ms" in r and not r.get("options") and not r.get("compiled")]
    by = {(r["method"], r["size"]): r["median_ms"] for r in rows}
    return [judge(f"{size} whole step", "switch_dit_step_vs_dit", by[("switch_dit", size)] / by[("dit", size)], spec)
            for size in sorted({size for _, size in by}) if ("dit", size) in by and ("switch_dit", size) in by]


def format_goals(goals: list[dict]) -> str:
    lines = []
    for g in goals:
        if g["passed"] is None:
            lines.append(f"GOAL ?    {g['shape']}: {g['note']}")
        else:
            lines.append(f"GOAL {'PASS' if g['passed'] else 'FAIL'} {g['goal']:<22} {g['value']:.3f} "
                         f"(target {g['target']})  [{g['shape']}]")
    return "\n".join(lines)
