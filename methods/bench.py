"""Speed/memory benchmark of the three methods (not a unit test).

    python -m methods.bench [--sizes S B] [--methods dit dtr switch_dit] [--device cuda]
                            [--batch 32] [--out results/methods/bench-H100-2025-01-01.json]
                            [--option moe_backend=torch] [--compile] [--official-repo DIR]

For every (method, size): median wall time of a training step (forward with
``return_aux=True`` + backward), median eval forward time (one shared timestep
per batch, as during sampling), peak memory of the training step (CUDA only),
and parameter count; then each routed method's overhead over DiT as ratios.
``--official-repo`` points at a local clone of the DiT, DTR or Switch-DiT reference
code (needs its own dependencies, e.g. timm) to time it at the same
configuration; it is optional and never committed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Any, Callable

import torch

from kernels.atomic import atomic_write_text
from kernels.bench import git_commit

from .registry import METHODS, SIZES, build_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _autocast(device: torch.device, dtype: str):
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[dtype])


def _inputs(args: argparse.Namespace, device: torch.device):
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(args.batch, args.in_channels, args.input_size, args.input_size, generator=gen).to(device)
    t_train = torch.randint(0, 1000, (args.batch,), generator=gen).to(device)
    # Sampling gives every sample the same timestep; samplers pass it expanded (stride 0), as here.
    t_eval = torch.full((), 500, device=device).expand(args.batch)
    y = torch.randint(0, args.num_classes, (args.batch,), generator=gen).to(device)
    return x, t_train, t_eval, y


def _time_model(model: torch.nn.Module, args: argparse.Namespace, device: torch.device, train_call, eval_call) -> dict[str, Any]:
    x, t_train, t_eval, y = _inputs(args, device)
    opt_params = [p for p in model.parameters() if p.requires_grad]

    def train_step():
        for p in opt_params:
            p.grad = None
        with _autocast(device, args.dtype):
            loss = train_call(model, x, t_train, y)
        loss.backward()

    def eval_step():
        with torch.no_grad(), _autocast(device, args.dtype):
            eval_call(model, x, t_eval, y)

    model.train()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    train_ms = _median_ms(train_step, device, args.warmup, args.repeats)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    model.eval()
    eval_ms = _median_ms(eval_step, device, args.warmup, args.repeats)
    return {
        "train_step_ms": round(train_ms, 3),
        "eval_forward_ms": round(eval_ms, 3),
        "train_peak_mem_mib": None if peak is None else round(peak, 1),
        "params": sum(p.numel() for p in model.parameters()),
    }


def _ours_train(model, x, t, y):
    out, aux = model(x, t, y, return_aux=True)
    return out.float().square().mean() + sum(aux.values(), torch.zeros((), device=out.device))


def _ours_eval(model, x, t, y):
    return model(x, t, y)


def bench_method(method: str, size: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    options = {k: v for k, v in args.options.items() if k in METHODS[method].OPTIONS}
    model = build_model(method, size, patch_size=args.patch_size, input_size=args.input_size,
                        in_channels=args.in_channels, num_classes=args.num_classes, **options).to(device)
    if args.compile:
        model = torch.compile(model)
    row = {"method": method, "size": size, "options": options, **_time_model(model, args, device, _ours_train, _ours_eval)}
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


def _official_train(model, x, t, y):
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
                rows.append({"method": name, "size": size, **_time_model(model, args, device, _official_train, _ours_eval)})
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


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs, {torch.get_num_threads()} threads)"


def _parse_option(text: str, parser: argparse.ArgumentParser) -> tuple[str, Any]:
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
    p = argparse.ArgumentParser(prog="python -m methods.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["S"], choices=list(SIZES))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="default: 32 on CUDA, 4 on CPU")
    p.add_argument("--input-size", type=int, default=32, help="latent side (32 = ImageNet 256 through the SD VAE)")
    p.add_argument("--patch-size", type=int, default=2)
    p.add_argument("--in-channels", type=int, default=4)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast dtype")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="time torch.compile'd models")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="method option for every method that has it, e.g. moe_backend=torch (repeatable)")
    p.add_argument("--official-repo", type=pathlib.Path, default=None)
    p.add_argument("--out", type=pathlib.Path, default=None, help="JSON file to write (atomically)")
    args = p.parse_args(argv)
    args.options = dict(_parse_option(text, p) for text in args.option)
    if args.batch is None:
        args.batch = 32 if args.device.startswith("cuda") else 4
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows = [bench_method(m, s, args, device) for s in args.sizes for m in args.methods]
    record: dict[str, Any] = {
        "benchmark": "methods.bench",
        "hardware": _hardware(device),
        "device": str(device),
        "torch": torch.__version__,
        "git_commit": git_commit(),
        "config": {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items() if k not in ("out", "option")},
        "results": rows,
        "ratios": overhead_ratios(rows),
    }
    if args.official_repo is not None:
        record["official"] = bench_official(args.official_repo, args.sizes, args, device)
        record["official_ratios"] = overhead_ratios([r for r in rows if r["method"] == "dit"] + record["official"])
    text = json.dumps(record, indent=2)
    if args.out is not None:
        atomic_write_text(args.out, text + "\n")
    print(text)
    return record


if __name__ == "__main__":
    main()
