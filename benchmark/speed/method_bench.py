"""Speed and memory of the three methods' models: training step and eval forward (not a unit test).

    python -m benchmark.speed.method_bench [--sizes S B] [--methods dit dtr switch_dit] [--device cuda]
                                           [--batch 32] [--dtype bf16] [--out results/methods]
                                           [--option moe_backend=torch] [--compile] [--official-repo DIR]

For every (method, size): median and IQR of a training step (forward with ``return_aux=True``
+ backward) and of an eval forward (one shared timestep per batch, as during sampling),
both built and timed by benchmark/speed/steps.py and timing.py; peak memory of the
training step (CUDA only) and parameter count; then each routed method's time over DiT's
as ratios. ``--official-repo`` points at a local clone of the DiT, DTR or Switch-DiT
reference code (needs its own dependencies, e.g. timm) to time it at the same
configuration; it is optional and never committed. The record goes to
``results/methods/<device>-<yyyymmdd>-<commit7>-<dtype>[-compiled].json``.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any, Callable

import torch

from methods import METHODS, SIZES, build_model

from . import records
from .steps import eval_forward, make_batch, model_forward, model_loss, time_step, train_step
from .timing import measure

AUTOCAST = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _time_model(model: torch.nn.Module, args: argparse.Namespace, device: torch.device, loss: Callable,
                forward: Callable) -> dict[str, Any]:
    batch = make_batch(args.batch, device, in_channels=args.in_channels, input_size=args.input_size,
                       num_classes=args.num_classes)
    dtype = AUTOCAST[args.dtype]
    model.train()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    step, params = train_step(model, batch, dtype, loss)
    train = time_step(step, params, device, args.warmup, args.repeats)
    model.eval()
    evals = measure(eval_forward(model, batch, dtype, forward), device, warmup=args.warmup, repeats=args.repeats)
    return {
        "train_step_ms": round(train["median_ms"], 3),
        "train_step_iqr_ms": round(train["iqr_ms"], 3),
        "eval_forward_ms": round(evals.median_ms, 3),
        "eval_forward_iqr_ms": round(evals.iqr_ms, 3),
        "repeats": args.repeats,
        "train_peak_mem_mib": None if train["peak_mem_mb"] is None else round(train["peak_mem_mb"], 1),
        "params": sum(p.numel() for p in model.parameters()),
    }


def bench_method(method: str, size: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    options = {k: v for k, v in args.options.items() if k in METHODS[method].options}
    model = build_model(method, size, patch_size=args.patch_size, input_size=args.input_size,
                        in_channels=args.in_channels, num_classes=args.num_classes, **options).to(device)
    if args.compile:
        model = torch.compile(model)
    row = {"method": method, "size": size, "options": options,
           **_time_model(model, args, device, model_loss, model_forward)}
    del model
    return row


def _official_models(repo: pathlib.Path) -> dict[str, Callable[[str, argparse.Namespace], torch.nn.Module]]:
    """Constructors for the reference models found in ``repo`` (their code, imported from the clone)."""
    from omegaconf import OmegaConf

    sys.path.insert(0, str(repo))
    builders: dict[str, Callable] = {}
    if (repo / "models" / "MoE.py").is_file():  # Switch-DiT code base: DTR and DMoE routing
        sys.path.insert(0, str(repo / "models" / "parallel_linear"))
        from models.DiT.models import DiT_models  # type: ignore[import-not-found]
        from models.MoE import TaskMoE  # type: ignore[import-not-found]
        from models.taskrouting import TaskRouter  # type: ignore[import-not-found]

        def switch(size, a):
            cfg = OmegaConf.create({"name": "DMoE", "taskcount": 1000, "w_JSD": 1.0, "param": {"num_experts": 3, "k": 2}})
            return DiT_models[f"DiT-{size}/{a.patch_size}"](input_size=a.input_size, num_classes=a.num_classes, router=TaskMoE, routing_config=cfg)

        def dtr(size, a):
            cfg = OmegaConf.create({"name": "DTR", "param": {"alpha": 4.0, "beta": 0.8, "taskcount": 1000}})
            return DiT_models[f"DiT-{size}/{a.patch_size}"](input_size=a.input_size, num_classes=a.num_classes, router=TaskRouter, routing_config=cfg)

        builders.update(official_switch_dit=switch, official_dtr=dtr)
    elif (repo / "models" / "taskrouting.py").is_file():  # DTR code base
        from models.DiT.models import DiT_models  # type: ignore[import-not-found]
        from models.taskrouting import TaskRouter  # type: ignore[import-not-found]

        def dtr_only(size, a):
            return DiT_models[f"DiT-{size}/{a.patch_size}"](input_size=a.input_size, num_classes=a.num_classes, router=TaskRouter,
                                                            sharing_ratio=0.8, taskcount=1000, init_method="DTR")

        builders["official_dtr"] = dtr_only
    elif (repo / "models.py").is_file():  # DiT code base: models.py with DiT_models at the top level
        from models import DiT_models  # type: ignore[import-not-found]

        def dit(size, a):
            return DiT_models[f"DiT-{size}/{a.patch_size}"](input_size=a.input_size, num_classes=a.num_classes)

        builders["official_dit"] = dit
    if not builders:
        raise FileNotFoundError(f"{repo} is not a DiT, DTR or Switch-DiT checkout "
                                "(looked for models/MoE.py, models/taskrouting.py, models.py)")
    return builders


def _official_loss(model, x, t, y):
    out = model(x, t, y)
    if isinstance(out, tuple):  # the Switch-DiT reference returns (output, aux loss) in training mode
        out, aux = out
        return out.float().square().mean() + aux
    return out.float().square().mean()


def bench_official(repo: pathlib.Path, sizes: list[str], args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    try:
        builders = _official_models(repo)
    except Exception as err:  # optional: report why instead of failing the whole run
        return [{"method": "official", "error": f"{type(err).__name__}: {err}"}]
    rows = []
    for name, make in builders.items():
        for size in sizes:
            try:
                model = make(size, args).to(device)
                rows.append({"method": name, "size": size,
                             **_time_model(model, args, device, _official_loss, model_forward)})
                del model
            except Exception as err:
                rows.append({"method": name, "size": size, "error": f"{type(err).__name__}: {err}"})
    return rows


def overhead_ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """{size: {"<method>/dit": {"train": r, "eval": r}}} for every non-DiT row with a DiT row of the same size."""
    base = {r["size"]: r for r in rows if r.get("method") == "dit" and "train_step_ms" in r}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows:
        if r.get("method") == "dit" or "train_step_ms" not in r or r["size"] not in base:
            continue
        b = base[r["size"]]
        out.setdefault(r["size"], {})[f"{r['method']}/dit"] = {
            "train": round(r["train_step_ms"] / b["train_step_ms"], 4),
            "eval": round(r["eval_forward_ms"] / b["eval_forward_ms"], 4),
        }
    return out


def parse_option(text: str, parser: argparse.ArgumentParser) -> tuple[str, Any]:
    """``NAME=VALUE`` with VALUE read as int, float or string."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        parser.error(f"--option {text!r} must look like NAME=VALUE")
    for cast in (int, float):
        try:
            return name, cast(value)
        except ValueError:
            pass
    return name, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmark.speed.method_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["S"], choices=list(SIZES))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="default: 32 on CUDA, 4 on CPU")
    p.add_argument("--input-size", type=int, default=32, help="latent side (32 = ImageNet 256 through the SD VAE)")
    p.add_argument("--patch-size", type=int, default=2)
    p.add_argument("--in-channels", type=int, default=4)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--dtype", choices=list(AUTOCAST), default="fp32", help="autocast dtype")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    p.add_argument("--repeats", type=int, default=5, help="timed calls (median and IQR)")
    p.add_argument("--compile", action="store_true", help="time torch.compile'd models")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="method option for every method that has it, e.g. moe_backend=torch (repeatable)")
    p.add_argument("--official-repo", type=pathlib.Path, default=None)
    p.add_argument("--out", default="results/methods", help="directory for the JSON record ('' writes none)")
    args = p.parse_args(argv)
    args.options = dict(parse_option(text, p) for text in args.option)
    if args.batch is None:
        args.batch = 32 if args.device.startswith("cuda") else 4
    if args.repeats < 1 or args.warmup < 0:
        p.error(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    return args


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'method':<22} {'size':<5} {'train ms':>10} {'IQR':>8} {'eval ms':>10} {'IQR':>8}"]
    for r in rows:
        if "train_step_ms" not in r:
            lines.append(f"{r.get('method', '?'):<22} {r.get('size', ''):<5} ERROR {r.get('error', '')}")
            continue
        lines.append(f"{r['method']:<22} {r['size']:<5} {r['train_step_ms']:>10.3f} {r['train_step_iqr_ms']:>8.3f} "
                     f"{r['eval_forward_ms']:>10.3f} {r['eval_forward_iqr_ms']:>8.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows = [bench_method(m, s, args, device) for s in args.sizes for m in args.methods]
    config = {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()
              if k not in ("out", "option")}
    record = records.new_record("method_speed", device, config=config, results=rows, ratios=overhead_ratios(rows))
    if args.official_repo is not None:
        record["official"] = bench_official(args.official_repo, args.sizes, args, device)
        record["official_ratios"] = overhead_ratios([r for r in rows if r["method"] == "dit"] + record["official"])
    print(format_rows(rows + record.get("official", [])))
    if args.out:
        what = args.dtype + ("-compiled" if args.compile else "")
        print(f"[method_bench] wrote {records.write_record(record, args.out, device, what)}")
    return record


if __name__ == "__main__":
    main()
