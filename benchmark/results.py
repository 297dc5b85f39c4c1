"""Machine-written result records: one JSON file per evaluated run.

Layout under a results directory::

    runs/<run_id>.json             the record (schema 1, fields in ``REQUIRED_FIELDS``)
    artifacts/<run_id>/<name>      PNGs, the training metrics JSONL, diagnostics

Records are validated before they are written (missing fields, wrong types and
non-finite metrics are refused with a one-line ``ValueError``) and written
atomically: a temporary file in the same directory followed by ``os.replace``,
so a reader never sees a half-written record. Artifact paths stored inside a
record are relative to the results directory, which keeps ``results/``
relocatable and lets reports link to them with stable relative paths.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping

from benchmark.atomic import atomic_write, atomic_write_text

SCHEMA_VERSION = 1

RUNS_DIR = "runs"
ARTIFACTS_DIR = "artifacts"

# Top-level fields every record carries, with the types each may take.
# ``None`` among the types means the field is required but may be null
# (e.g. cfg_scale for an unconditional run, autoencoder for pixel space).
_NUM = (int, float)
REQUIRED_FIELDS: dict[str, tuple[type, ...]] = {
    "schema": (int,),
    "run_id": (str,),
    "method": (str,),
    "size": (str,),
    "patch_size": (int,),
    "dataset": (str,),
    "image_size": (int,),
    "iterations": (int,),
    "global_batch_size": (int,),
    "seed": (int,),
    "sampler": (str,),
    "sampling_steps": (int,),
    "cfg_scale": _NUM + (type(None),),
    "num_samples": (int,),
    "autoencoder": (str, type(None)),
    "evaluation": (dict,),
    "metrics": (dict,),
    "training": (dict,),
    "artifacts": (dict,),
    "wall_time_s": (dict,),
    "hardware": (dict,),
    "git_commit": (str, type(None)),
    "created": (str,),
}

# Provenance an evaluation must name so a number can be traced to its evaluator.
EVALUATION_FIELDS = ("feature_extractor", "weights", "weights_sha256", "reference", "num_samples")

# Metric keys the reports know; each is a finite number or null. A null
# Inception Score must come with the reason it is unavailable.
METRIC_FIELDS = ("fid", "inception_score", "precision", "recall", "kid", "sfid", "fid_clean")

# run ids become file names: keep them portable and free of path separators.
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,199}$")


def validate_run_id(run_id: Any) -> str:
    """Return ``run_id`` if it is a safe file-name stem, else raise ``ValueError``."""
    if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id) or run_id in {".", ".."}:
        raise ValueError(
            f"run_id {run_id!r} is invalid: use 1-200 characters from letters, digits and ._=+- "
            "(starting with a letter or digit)"
        )
    return run_id


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def _check_finite(value: Any, where: str) -> None:
    """Reject NaN/inf anywhere inside ``value`` (JSON cannot carry them faithfully)."""
    if isinstance(value, bool):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} is {value!r}: metrics must be finite numbers or null")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{where}[{i}]")


def validate_record(record: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first problem in ``record``; return None if it is valid."""
    if not isinstance(record, Mapping):
        raise TypeError(f"record must be a dict, got {type(record).__name__}")
    missing = [k for k in REQUIRED_FIELDS if k not in record]
    if missing:
        raise ValueError(f"record is missing required fields {missing}; required: {list(REQUIRED_FIELDS)}")
    for key, types in REQUIRED_FIELDS.items():
        value = record[key]
        # bool is an int subclass; a True iteration count is a bug, not a number.
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(
                f"record field {key!r} = {value!r} has type {type(value).__name__}; expected {_type_names(types)}"
            )
    if record["schema"] != SCHEMA_VERSION:
        raise ValueError(f"record schema {record['schema']!r} is not supported; this code writes schema {SCHEMA_VERSION}")
    validate_run_id(record["run_id"])

    evaluation = record["evaluation"]
    missing_eval = [k for k in EVALUATION_FIELDS if k not in evaluation]
    if missing_eval:
        raise ValueError(f"record evaluation is missing {missing_eval}; required: {list(EVALUATION_FIELDS)}")

    metrics = record["metrics"]
    for key, value in metrics.items():
        if key.endswith("_unavailable"):
            if not isinstance(value, str) or not value:
                raise ValueError(f"metrics.{key} = {value!r} must be a non-empty reason string")
            continue
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, dict, list))):
            raise ValueError(f"metrics.{key} = {value!r} must be a number, null, or a nested dict of numbers")
        _check_finite(value, f"metrics.{key}")
    if "fid" not in metrics:
        raise ValueError("record metrics must contain 'fid' (a number, or null with 'fid_unavailable')")
    for key in METRIC_FIELDS:
        if key in metrics and metrics[key] is None and not metrics.get(f"{key}_unavailable"):
            raise ValueError(f"metrics.{key} is null without metrics.{key}_unavailable giving the reason")

    _check_finite(record["training"], "training")
    _check_finite(record["wall_time_s"], "wall_time_s")
    for key, value in record["artifacts"].items():
        if key == "diagnostics":
            if not isinstance(value, Mapping):
                raise ValueError(f"artifacts.diagnostics must be a dict name -> path, got {type(value).__name__}")
            paths = list(value.values())
        else:
            paths = [value]
        for p in paths:
            if p is not None and (not isinstance(p, str) or Path(p).is_absolute()):
                raise ValueError(f"artifact path {p!r} under artifacts.{key} must be relative to the results dir")


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def record_path(results_dir: str | os.PathLike, run_id: str) -> Path:
    """Where the record of ``run_id`` lives under ``results_dir``."""
    return Path(results_dir) / RUNS_DIR / f"{validate_run_id(run_id)}.json"


def write_record(record: Mapping[str, Any], results_dir: str | os.PathLike) -> Path:
    """Validate ``record`` and write it atomically to ``results_dir/runs/<run_id>.json``.

    An existing record with the same run id is replaced (re-evaluating a run
    updates its record). Returns the path written.
    """
    validate_record(record)
    path = record_path(results_dir, record["run_id"])
    # allow_nan=False: a second guard so NaN can never reach disk as invalid JSON.
    text = json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n"
    _atomic_write_text(path, text)
    return path


def load_records(results_dir: str | os.PathLike) -> list[dict]:
    """All records under ``results_dir/runs``, sorted by run id (deterministic for reports).

    A file that is not valid JSON or not a valid record raises ``ValueError``
    naming the file, rather than being silently skipped.
    """
    runs = Path(results_dir) / RUNS_DIR
    if not runs.is_dir():
        return []
    records = []
    for path in sorted(runs.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            validate_record(record)
        except (json.JSONDecodeError, ValueError, TypeError) as exc:
            raise ValueError(f"invalid result record {path}: {exc}") from exc
        records.append(record)
    return sorted(records, key=lambda r: r["run_id"])


def copy_artifact(src: str | os.PathLike, results_dir: str | os.PathLike, run_id: str, name: str) -> str:
    """Copy ``src`` to ``results_dir/artifacts/<run_id>/<name>``; return that path relative to ``results_dir``.

    The relative POSIX path is what goes into ``record["artifacts"]``.
    """
    src = Path(src)
    if not src.is_file():
        raise ValueError(f"artifact source {str(src)!r} is not a file")
    name_path = Path(name)
    if not name or name_path.is_absolute() or ".." in name_path.parts:
        raise ValueError(f"artifact name {name!r} must be a relative path inside the run's artifact dir")
    rel = Path(ARTIFACTS_DIR) / validate_run_id(run_id) / name_path
    dst = Path(results_dir) / rel
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
    return rel.as_posix()


def git_commit(repo_dir: str | os.PathLike | None = None) -> str | None:
    """The current commit hash (with ``-dirty`` when the work tree has changes), or None outside git."""
    cwd = Path(repo_dir) if repo_dir is not None else Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha or None


def hardware_info(device: Any = None) -> dict:
    """Describe the hardware a run used: device type, its name, how many, and the torch version."""
    import torch

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info: dict[str, Any] = {"device": dev.type, "torch": torch.__version__}
    if dev.type == "cuda" and torch.cuda.is_available():
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        info["name"] = torch.cuda.get_device_name(index)
        info["count"] = torch.cuda.device_count()
        world = _world_size()
        if world > 1:
            info["world_size"] = world
    else:
        info["name"] = platform.processor() or platform.machine() or "cpu"
        info["count"] = 1
        info["cpu_threads"] = torch.get_num_threads()
    return info


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def utc_now() -> str:
    """ISO-8601 UTC timestamp with second resolution, the format of ``record['created']``."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def new_record(**fields: Any) -> dict:
    """A record skeleton with schema, created, git commit and empty sub-dicts filled in; ``fields`` override."""
    record: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "evaluation": {},
        "metrics": {},
        "training": {},
        "artifacts": {},
        "wall_time_s": {},
        "hardware": {},
        "git_commit": git_commit(),
        "created": utc_now(),
    }
    record.update(fields)
    return record


def records_for(records: Iterable[Mapping[str, Any]], **match: Any) -> list[dict]:
    """Filter records whose fields equal every ``match`` item (e.g. ``dataset="digits"``)."""
    return [dict(r) for r in records if all(r.get(k) == v for k, v in match.items())]
