"""Machine-written result records: one JSON file per evaluated cell, named by its identity.

Layout under a results directory::

    runs/<run id>/<eval id>.json          the record (schema 2); ids from benchmark.identity
    artifacts/<run id>/<name>             what belongs to the training run (its metrics log, loss curve)
    artifacts/<run id>/<eval id>/<name>   what belongs to one evaluation (sample grid, diagnostics)

A record carries its identity (``identity``: the training and evaluation protocols and their
hashes) and, as plain fields for readers, the values derived from it (method, size, the
checkpoint step as ``iterations``, sampler, ...). Records are validated before they are
written and when they are read: a missing field, a wrong type, a non-finite metric, a hash
that does not match its protocol (a hand-edited file), a derived field that disagrees with
the identity, or a file name that is not the record's own is refused with a one-line
``ValueError`` naming the file. A record is never replaced: writing over an existing one
raises ``FileExistsError`` (``overwrite=true`` moves the old one aside first, see
benchmark.aside). Artifact paths are relative to the results directory.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

from methods.atomic import atomic_write, atomic_write_text
from benchmark.identity import check_spec_hash

SCHEMA_VERSION = 2

RUNS_DIR = "runs"
ARTIFACTS_DIR = "artifacts"

_NUM = (int, float)
_NONE = type(None)
# Top-level fields every record carries, with the types each may take (None: may be null).
REQUIRED_FIELDS: dict[str, tuple[type, ...]] = {
    "schema": (int,),
    "run_id": (str,),
    "eval_id": (str,),
    "identity": (dict,),
    "recipe": (str, _NONE),
    "method": (str,),
    "size": (str,),
    "patch_size": (int,),
    "dataset": (str,),
    "image_size": (int,),
    "iterations": (int, _NONE),            # the evaluated checkpoint's step (None: an outside checkpoint)
    "global_batch_size": (int, _NONE),
    "seed": (int,),
    "sampler": (str,),
    "sampling_steps": (int,),
    "cfg_scale": _NUM,
    "guidance_channels": (int, _NONE),
    "num_samples": (int,),
    "autoencoder": (str, _NONE),
    "evaluation": (dict,),
    "metrics": (dict,),
    "training": (dict,),
    "compute": (dict,),
    "artifacts": (dict,),
    "wall_time_s": (dict,),
    "hardware": (dict,),
    "versions": (dict,),
    "git": (dict,),
    "git_commit": (str, _NONE),
    "created": (str,),
}

# Provenance an evaluation must name so a number can be traced to its evaluator.
EVALUATION_FIELDS = ("feature_extractor", "weights", "weights_sha256", "reference", "num_samples")

# Metric keys the reports know; each is a finite number or null. A null
# Inception Score must come with the reason it is unavailable.
METRIC_FIELDS = ("fid", "inception_score", "precision", "recall", "kid", "sfid", "fid_clean")

# Ids become folder and file names: portable, no path separators.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,199}$")


class RecordExists(FileExistsError):
    """A record of this identity is already written; overwrite=true moves it aside first."""


def validate_id(value: Any, what: str = "run_id") -> str:
    """Return ``value`` if it is a safe file-name stem, else raise ``ValueError``."""
    if not isinstance(value, str) or not _ID_RE.match(value) or value in {".", ".."}:
        raise ValueError(
            f"{what} {value!r} is invalid: use 1-200 characters from letters, digits and ._=+- "
            "(starting with a letter or digit)"
        )
    return value


def validate_run_id(run_id: Any) -> str:
    return validate_id(run_id, "run_id")


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is _NONE else t.__name__ for t in types)


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


# ------------------------------------------------------------------ fields derived from the identity


def derived_fields(ident: Mapping) -> dict:
    """The plain fields a record shows for readers, read off its identity (the one source)."""
    evals = ident["eval"]
    sampling = evals["sampling"]
    sample, ckpt = sampling["sample"], sampling["checkpoint"]
    train = ident.get("train")
    out = {
        "iterations": ckpt.get("step"),
        "seed": sampling["seed"],
        "sampler": sample["sampler"],
        "sampling_steps": sample["steps"],
        "cfg_scale": sample["cfg_scale"],
        "guidance_channels": sample.get("guidance_channels"),
        "num_samples": evals["num_fid_samples"],
    }
    if train is not None:
        ae = train["autoencoder"]
        out.update(
            method=train["method"]["name"], size=train["size"]["name"], patch_size=train["model"]["patch_size"],
            dataset=train["data"]["name"], image_size=train["data"]["image_size"],
            global_batch_size=train["train"]["global_batch_size"],
            autoencoder=None if ae["name"] == "none" else f"{ae['name']}-{ae.get('variant', '')}".rstrip("-"),
        )
    else:
        model = ckpt["model"]
        out.update(method=model["method"], size=model["size"], patch_size=model["patch_size"],
                   global_batch_size=None)
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _check_identity(record: Mapping) -> None:
    ident = record["identity"]
    for key in ("eval", "eval_hash", "train", "train_hash"):
        if key not in ident:
            raise ValueError(f"record identity lacks {key!r}")
    check_spec_hash(ident["eval"], ident["eval_hash"], "evaluation")
    if ident["train"] is not None:
        check_spec_hash(ident["train"], ident["train_hash"], "training")
        if not record["run_id"].endswith(f"-{ident['train_hash']}"):
            raise ValueError(f"run_id {record['run_id']!r} does not end with its training hash {ident['train_hash']}")
    if not record["eval_id"].endswith(f"-{ident['eval_hash']}"):
        raise ValueError(f"eval_id {record['eval_id']!r} does not end with its evaluation hash {ident['eval_hash']}")
    for key, value in derived_fields(ident).items():
        if not _same(record.get(key), value):
            raise ValueError(f"record field {key!r} = {record.get(key)!r} disagrees with its identity ({value!r})")


def validate_record(record: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first problem in ``record``; return None if it is valid."""
    if not isinstance(record, Mapping):
        raise TypeError(f"record must be a dict, got {type(record).__name__}")
    if record.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"record schema {record.get('schema')!r} is not supported; this code reads schema "
                         f"{SCHEMA_VERSION}")
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
    validate_id(record["run_id"], "run_id")
    validate_id(record["eval_id"], "eval_id")

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
            raise ValueError(f"metrics.{key} = {value!r} must be a number, null, a list or a nested dict of numbers")
        _check_finite(value, f"metrics.{key}")
    if "fid" not in metrics:
        raise ValueError("record metrics must contain 'fid' (a number, or null with 'fid_unavailable')")
    for key in METRIC_FIELDS:
        if key in metrics and metrics[key] is None and not metrics.get(f"{key}_unavailable"):
            raise ValueError(f"metrics.{key} is null without metrics.{key}_unavailable giving the reason")

    for key in ("training", "compute", "wall_time_s"):
        _check_finite(record[key], key)
    for key, value in record["artifacts"].items():
        paths = list(value.values()) if isinstance(value, Mapping) else [value]
        for p in paths:
            if p is not None and (not isinstance(p, str) or Path(p).is_absolute() or ".." in Path(p).parts):
                raise ValueError(f"artifact path {p!r} under artifacts.{key} must be relative to the results dir")
    _check_identity(record)


# ------------------------------------------------------------------ files


def record_path(results_dir: str | os.PathLike, run_id: str, eval_id: str) -> Path:
    """Where the record of (``run_id``, ``eval_id``) lives under ``results_dir``."""
    return Path(results_dir) / RUNS_DIR / validate_id(run_id, "run_id") / f"{validate_id(eval_id, 'eval_id')}.json"


def artifact_dir(results_dir: str | os.PathLike, run_id: str, eval_id: str | None = None) -> Path:
    base = Path(results_dir) / ARTIFACTS_DIR / validate_id(run_id, "run_id")
    return base / validate_id(eval_id, "eval_id") if eval_id else base


def write_record(record: Mapping[str, Any], results_dir: str | os.PathLike) -> Path:
    """Validate ``record`` and write it atomically to its path; an existing record is never replaced."""
    validate_record(record)
    path = record_path(results_dir, record["run_id"], record["eval_id"])
    if path.exists():
        raise RecordExists(f"record {path} exists; overwrite=true moves it aside and evaluates again")
    # allow_nan=False: a second guard so NaN can never reach disk as invalid JSON.
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path


def read_record(path: str | os.PathLike, results_dir: str | os.PathLike | None = None) -> dict:
    """One record, validated; ``ValueError`` naming the file for anything wrong with it."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        validate_record(record)
        if results_dir is not None and path != record_path(results_dir, record["run_id"], record["eval_id"]):
            raise ValueError(f"its name is not its identity's ({record['run_id']}/{record['eval_id']}.json)")
    except (OSError, json.JSONDecodeError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"result record {path} refused: {exc}") from None
    return record


def record_files(results_dir: str | os.PathLike) -> list[Path]:
    runs = Path(results_dir) / RUNS_DIR
    return sorted(runs.glob("*/*.json")) if runs.is_dir() else []


def scan_records(results_dir: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """(valid records sorted by run and eval id, one line per file refused and why)."""
    records, refused = [], []
    for path in record_files(results_dir):
        try:
            records.append(read_record(path, results_dir))
        except ValueError as exc:
            refused.append(str(exc))
    return sorted(records, key=lambda r: (r["run_id"], r["eval_id"])), refused


def load_records(results_dir: str | os.PathLike) -> list[dict]:
    """Every record; the first refused file raises ``ValueError`` naming it."""
    records, refused = scan_records(results_dir)
    if refused:
        raise ValueError(refused[0])
    return records


def copy_artifact(src: str | os.PathLike, results_dir: str | os.PathLike, run_id: str, name: str,
                  eval_id: str | None = None) -> str:
    """Copy ``src`` into the run's (or the evaluation's) artifact folder; return the path relative to ``results_dir``."""
    src = Path(src)
    if not src.is_file():
        raise ValueError(f"artifact source {str(src)!r} is not a file")
    name_path = Path(name)
    if not name or name_path.is_absolute() or ".." in name_path.parts:
        raise ValueError(f"artifact name {name!r} must be a relative path inside the run's artifact dir")
    dst = artifact_dir(results_dir, run_id, eval_id) / name_path
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
    return dst.relative_to(Path(results_dir)).as_posix()


def utc_now() -> str:
    """ISO-8601 UTC timestamp with second resolution, the format of ``record['created']``."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def new_record(ident: Mapping, *, provenance: Mapping, **fields: Any) -> dict:
    """A record for identity ``ident`` (CellIdentity.as_record()): derived fields, provenance, ``fields``."""
    record: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "run_id": ident["run_id"],
        "eval_id": ident["eval_id"],
        "identity": {k: v for k, v in ident.items() if k not in ("run_id", "eval_id")},
        "recipe": None,
        "evaluation": {}, "metrics": {}, "training": {}, "compute": {}, "artifacts": {}, "wall_time_s": {},
        "git_commit": provenance.get("git_commit"),
        "git": dict(provenance.get("git") or {}),
        "hardware": dict(provenance.get("hardware") or {}),
        "versions": dict(provenance.get("versions") or {}),
        "created": utc_now(),
    }
    record.update(fields)
    record.update(derived_fields(record["identity"]))
    return json.loads(json.dumps(record))   # plain JSON types throughout


def records_for(records: Iterable[Mapping[str, Any]], **match: Any) -> list[dict]:
    """Filter records whose fields equal every ``match`` item (e.g. ``dataset="digits"``)."""
    return [dict(r) for r in records if all(r.get(k) == v for k, v in match.items())]
