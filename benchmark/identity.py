"""A result's identity: what was trained and what was measured, each as a short stable hash.

A cell's composed configuration splits into

* the **training** identity: method and its options, size, model, data and its
  preprocessing, autoencoder, diffusion, loss weighting, the training protocol
  (iterations, global batch, optimiser, EMA, precision) and the seed;
* the **sampling** identity: the checkpoint (the training hash and step of one of this
  suite's, or an outside file's sha256), sampler, steps, cfg scale and guidance channels, number of samples,
  batching (it decides which noise each image gets), the seed;
* the **evaluation** identity: the sampling identity plus the number of FID samples,
  the reference and its size, and the Inception weights asked for.

Each is hashed from its canonical JSON (sorted keys, integral floats written as integers).
Keys that cannot change a number are left out and listed in ``NOT_IDENTITY``: paths,
progress bars, logging and checkpoint intervals, launcher resources, implementation
choices that compute the same function (the MoE backend, torch.compile, gradient
checkpointing, the latent extraction batch, the Inception batch), and which metrics are
computed. Every other key counts, including keys added later.

Names stay readable: the run folder is ``<run_name>-<train hash>`` (e.g.
``switch_dit-XL-p2-imagenet256-s0-1a2b3c4d5e``), a sample folder
``<step>-<sampler><steps>-cfg<scale>-n<samples>-<sample hash>`` inside it, and a record
``results/runs/<run id>/<step>-<sampler><steps>-cfg<scale>-n<fid samples>-<eval hash>.json``.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from benchmark.provenance import cached_file_sha256

HASH_CHARS = 10
IDENTITY_FILE = "identity.json"

# Dotted keys (or whole sections) that never enter an identity.
NOT_IDENTITY = frozenset({
    "paths", "run_name", "launcher", "overwrite", "hydra", "recipe", "recipe_requires", "preflight",
    "data.path", "autoencoder.path",
    "method.options.moe_backend",
    "train.progress", "train.log_every", "train.ckpt_every", "train.resume", "train.latent_batch_size",
    "train.compile", "train.grad_checkpointing",
    "sample.out", "sample.ckpt",
    "eval.samples", "eval.batch_size", "eval.metrics", "eval.bootstrap_resamples", "eval.bootstrap_seed",
})
TRAIN_SECTIONS = ("method", "size", "model", "data", "autoencoder", "diffusion", "loss_weight", "train", "seed")
# Sampling reads the diffusion and decodes through the autoencoder, whatever checkpoint it loads.
SAMPLE_SECTIONS = ("sample", "seed", "diffusion", "autoencoder")
EVAL_KEYS = ("eval.num_fid_samples", "eval.reference", "eval.reference_max_images", "eval.inception_weights")


def _canonical(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return str(value)


def spec_hash(spec: Mapping) -> str:
    text = json.dumps(_canonical(spec), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:HASH_CHARS]


def _container(cfg: DictConfig | Mapping) -> dict:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


def _strip(tree: Any, prefix: str) -> Any:
    """``tree`` without the keys listed in NOT_IDENTITY (by their dotted path under ``prefix``)."""
    if not isinstance(tree, Mapping):
        return tree
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if dotted not in NOT_IDENTITY:
            out[key] = _strip(value, dotted)
    return out


def train_spec(cfg: DictConfig | Mapping) -> dict:
    """What was trained (see the module docstring)."""
    c = _container(cfg)
    return {section: _strip(c.get(section), section) for section in TRAIN_SECTIONS}


def run_id(cfg: DictConfig | Mapping) -> str:
    """The run folder's name: the readable ``run_name`` and the training hash."""
    c = _container(cfg)
    return f"{c['run_name']}-{spec_hash(train_spec(c))}"


# ------------------------------------------------------------------ checkpoints

_STEP = re.compile(r"^(\d{7,})\.pt$")


def owning_run(checkpoint: str | Path) -> Path | None:
    """The run folder a checkpoint of this suite sits in (``<run>/checkpoints/NNNNNNN.pt``), if any."""
    path = Path(checkpoint).resolve()
    if path.parent.name == "checkpoints" and _STEP.match(path.name):
        run = path.parent.parent
        if (run / IDENTITY_FILE).is_file():
            return run
    return None


def checkpoint_step(checkpoint: str | Path) -> int | None:
    m = _STEP.match(Path(checkpoint).name)
    return int(m.group(1)) if m else None



def checkpoint_ref(cfg: DictConfig | Mapping) -> dict:
    """Which weights are sampled: the training hash and step of a checkpoint of this suite (not its
    folder's name, which ``run_name`` may change), else the file's sha256 and the model it is read into."""
    c = _container(cfg)
    ckpt = c["sample"].get("ckpt")
    if not ckpt:
        return {"train_hash": spec_hash(train_spec(c)), "step": int(c["train"]["iterations"])}
    owner = owning_run(ckpt)
    if owner is not None:
        found = read_run_identity(owner) or {}
        return {"train_hash": found.get("train_hash"), "step": checkpoint_step(ckpt)}
    path = Path(str(ckpt))
    if not path.is_file():
        raise FileNotFoundError(f"sample.ckpt={path} does not exist; pass a checkpoint file")
    # An outside file says nothing of how to read it: the model it is loaded into is part of it.
    model = {"method": c["method"]["name"], "size": c["size"]["name"], "patch_size": c["model"]["patch_size"],
             "options": _strip(c["method"].get("options") or {}, "method.options")}
    return {"file": path.name, "sha256": cached_file_sha256(path), "model": model}


def _path_ref(value: str | None) -> Any:
    """A reference or weights file named by what it is, not where it lies: its name and size."""
    if not value:
        return value
    path = Path(str(value)).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return {"folder": path.name, "files": len(files), "bytes": sum(p.stat().st_size for p in files)}
    if path.is_file():
        return {"file": path.name, "bytes": path.stat().st_size}
    return {"missing": str(value)}


def sample_spec(cfg: DictConfig | Mapping, checkpoint: Mapping | None = None) -> dict:
    c = _container(cfg)
    spec = {section: _strip(c.get(section), section) for section in SAMPLE_SECTIONS}
    spec["checkpoint"] = dict(checkpoint if checkpoint is not None else checkpoint_ref(c))
    return spec


def eval_spec(cfg: DictConfig | Mapping, checkpoint: Mapping | None = None) -> dict:
    c = _container(cfg)
    spec = {"sampling": sample_spec(c, checkpoint)}
    for dotted in EVAL_KEYS:
        section, key = dotted.split(".")
        spec[key] = c[section].get(key)
    spec["reference"] = _path_ref(spec["reference"]) if spec["reference"] else {
        "dataset": c["data"]["dataset"], "name": c["data"]["name"], "image_size": c["data"]["image_size"]}
    spec["inception_weights"] = _path_ref(spec["inception_weights"]) or "auto"
    return spec


# ------------------------------------------------------------------ names


def _label(checkpoint: Mapping, sample: Mapping, count: int) -> str:
    step = checkpoint.get("step")
    head = f"{int(step):07d}" if step is not None else "ext"
    scale = float(sample["cfg_scale"])
    return f"{head}-{sample['sampler']}{sample['steps']}-cfg{scale:g}-n{count}"


@dataclass(frozen=True)
class CellIdentity:
    """The identity of one evaluated cell: its run, sample folder and record names."""

    run_id: str
    train: dict | None           # None for an outside checkpoint
    train_hash: str | None
    checkpoint: dict
    sample: dict
    sample_hash: str
    sample_id: str
    eval: dict
    eval_hash: str
    eval_id: str

    def as_record(self) -> dict:
        return {"run_id": self.run_id, "train": self.train, "train_hash": self.train_hash,
                "sample_hash": self.sample_hash, "eval": self.eval, "eval_hash": self.eval_hash,
                "eval_id": self.eval_id}


def external_run_id(checkpoint: Mapping) -> str:
    stem = re.sub(r"[^A-Za-z0-9._=+-]+", "-", Path(checkpoint["file"]).stem).strip("-.") or "checkpoint"
    return f"external-{stem[:80]}-{checkpoint['sha256'][:HASH_CHARS]}"


def read_run_identity(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / IDENTITY_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def cell_identity(cfg: DictConfig | Mapping) -> CellIdentity:
    """Everything that names the cell's results; the training part is the owning run's."""
    c = _container(cfg)
    checkpoint = checkpoint_ref(c)
    if "train_hash" in checkpoint:
        owner = owning_run(c["sample"]["ckpt"]) if c["sample"].get("ckpt") else None
        if owner is None or owner.name == run_id(c):
            train, rid = train_spec(c), run_id(c)
        else:  # another run's checkpoint: that run's identity, never this config's
            train, rid = (read_run_identity(owner) or {}).get("train"), owner.name
        thash = spec_hash(train) if train is not None else None
    else:
        train, thash, rid = None, None, external_run_id(checkpoint)
    sample = sample_spec(c, checkpoint)
    shash = spec_hash(sample)
    evals = eval_spec(c, checkpoint)
    ehash = spec_hash(evals)
    return CellIdentity(
        run_id=rid, train=train, train_hash=thash, checkpoint=checkpoint, sample=sample, sample_hash=shash,
        sample_id=f"{_label(checkpoint, c['sample'], int(c['sample']['num_samples']))}-{shash}",
        eval=evals, eval_hash=ehash,
        eval_id=f"{_label(checkpoint, c['sample'], int(c['eval']['num_fid_samples']))}-{ehash}")


def check_spec_hash(spec: Mapping | None, stored: str | None, what: str) -> None:
    """Raise ValueError when a stored hash does not match its spec (a hand-edited file)."""
    if spec is None and stored is None:
        return
    if spec is None or stored is None or spec_hash(spec) != stored:
        raise ValueError(f"its {what} hash {stored!r} does not match its {what} protocol "
                         f"(hash {spec_hash(spec) if spec is not None else None!r}); was it edited by hand?")
