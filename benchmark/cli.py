"""``python -m benchmark VERB [hydra overrides]``: dispatch a verb, then hand the rest to Hydra.

Hydra's ``@hydra.main`` takes no positional verb, so the verb is read first and the
remaining arguments (overrides, ``-m`` for sweeps, ``--cfg job``) go to a Hydra
application built per verb over the same ``conf/`` tree. Group choices and the
composed config of every sweep cell are checked before Hydra starts, so a bad
value fails with one line and nothing is trained or written.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass

from kernels.registry import Registry

from benchmark.config import (ALIASES, GROUPS, ConfigError, check_group_choices, compose, expand_aliases,
                              expand_sweep, group_options)


@dataclass(frozen=True)
class Verb:
    target: str          # "module:function" taking the composed DictConfig
    summary: str
    keys: str            # the config keys a user of this verb usually sets
    compose: bool = True  # False: the verb takes plain arguments, not Hydra overrides
    own_help: bool = False  # True: --help goes to the verb's own argument parser, which lists every flag


VERBS: Registry[Verb] = Registry("verb", {
    "run": Verb(
        "benchmark.pipeline:main",
        "train -> sample -> evaluate -> record -> report, for one cell or (with -m) a sweep. "
        "With no method= given it compares every registered method.",
        "method= size= data= data.path= seed= train.iterations= sample.num_samples= sample.cfg_scale=",
    ),
    "train": Verb(
        "benchmark.train:main",
        "train one cell (one process, torchrun DDP, or SLURM ranks); checkpoints under runs/<run_name>/",
        "method= size= data= train.iterations= train.global_batch_size= train.lr= train.resume=latest "
        "train.ckpt_every= loss_weight= diffusion.noise_schedule=",
    ),
    "latents": Verb(
        "benchmark.train:latents_main",
        "encode the dataset once into paths.cache (training does it first otherwise; one job before a grid "
        "saves every cell doing it); torchrun splits the work over GPUs",
        "data= data.path= autoencoder.path= data.latents=posterior|sample_once data.latent_dtype= paths.cache=",
    ),
    "sample": Verb(
        "benchmark.sample:main",
        "sample N images from a checkpoint (this suite's or a published DiT one): PNGs + ADM .npz",
        "sample.ckpt=PATH sample.num_samples= sample.sampler=ddpm|ddim sample.steps= sample.cfg_scale= sample.out=",
    ),
    "evaluate": Verb(
        "benchmark.pipeline:evaluate_main",
        "FID / IS / Precision / Recall / KID / sFID of a sample folder or .npz (ADM protocol)",
        "eval.samples=PATH eval.reference=ADM.npz eval.num_fid_samples= eval.inception_weights=",
    ),
    "report": Verb(
        "benchmark.pipeline:report_main",
        "rebuild reports/ from results/ (markdown tables beside the published numbers, plots)",
        "paths.results= paths.reports=",
    ),
    "kernels": Verb(
        "benchmark.speed.kernel_bench:main",
        "microbenchmarks of Switch-DiT's MoE expert layer (fused Triton kernel vs the official formulation, "
        "torch._grouped_mm, dense nn.Linear), errors against float64; JSON under results/kernels/ "
        "(a CPU's under results/kernels/cpu/). GPU acceptance run: python -m benchmark.speed.gpu_check",
        "--quick --device --dtype --providers --repeats --whole-step --out",
        compose=False,
        own_help=True,
    ),
    "submit": Verb(
        "benchmark.launch.submit:main",
        "send a grid (method x size x seed sweeps) to SLURM through submitit as train -> sample -> evaluate "
        "job arrays; launcher=local runs the same grid here",
        "method=dit,dtr,switch_dit size=S,B seed=0,1 launcher=slurm|local launcher.slurm.partition= ...",
        compose=False,
    ),
    "status": Verb(
        "benchmark.launch.status:main",
        "show the submitted grid: pending / running / done / failed per cell, with logs of failures",
        "the same overrides as submit",
        compose=False,
    ),
})

def _available_verbs() -> dict[str, Verb]:
    out = {}
    for name, verb in VERBS.items():
        module = verb.target.split(":")[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # its parent package is not built either
            found = False
        if found:
            out[name] = verb
    return out


def usage() -> str:
    verbs = _available_verbs()
    width = max(len(v) for v in verbs)
    lines = [
        "usage: python -m benchmark VERB [hydra overrides] [-m] [--cfg job] [--help]",
        "",
        "Compare DiT, DTR and Switch-DiT on one diffusion harness.",
        "",
        "verbs:",
    ]
    lines += [f"  {name.ljust(width)}  {verb.summary}" for name, verb in verbs.items()]
    lines += [
        "",
        "examples:",
        "  python -m benchmark run                                  # the embedded default comparison on CPU",
        "  python -m benchmark run method=switch_dit size=XL data=imagenet data.path=/data/imagenet/train "
        "eval.reference=/refs/VIRTUAL_imagenet256_labeled.npz",
        "  python -m benchmark run -m method=dit,dtr,switch_dit size=debug seed=0,1",
        "",
        "`python -m benchmark VERB --help` describes one verb.",
    ]
    return "\n".join(lines)


def verb_help(name: str, verb: Verb) -> str:
    tail = "[overrides] [-m] [--cfg job]" if verb.compose else "[options]"
    lines = [f"usage: python -m benchmark {name} {tail}", "", verb.summary, ""]
    if verb.compose:
        lines.append("config groups (GROUP=OPTION):")
        for group in GROUPS:
            lines.append(f"  {group:<12} {', '.join(group_options(group))}")
        lines += ["", f"common keys: {verb.keys}",
                  "aliases: " + ", ".join(f"{k}= -> {v}=" for k, v in ALIASES.items()),
                  "", "`--cfg job` prints the composed config; `-m` sweeps comma-separated values."]
    else:
        lines.append(f"options: {verb.keys}")
    return "\n".join(lines)


def _resolve(target: str):
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def _default_comparison(name: str, args: list[str]) -> list[str]:
    """`run` with no method chosen compares every registered method (a Hydra sweep)."""
    if name != "run" or any(a.split("=")[0].lstrip("+") == "method" for a in args):
        return args
    import methods

    return ["-m", "method=" + ",".join(methods.METHODS)] + args


def _precheck(overrides: list[str]) -> None:
    check_group_choices(overrides)
    for cell in expand_sweep(overrides):
        compose(cell)


def fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)


CFG_FLAGS = ("--cfg", "-c")


def _cfg_request(args: list[str]) -> tuple[str | None, list[str]]:
    """(what ``--cfg``/``-c`` asks to print, the other arguments); (None, args) without the flag."""
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag in CFG_FLAGS:
            if not eq:
                value = args[i + 1] if i + 1 < len(args) else ""
                rest = args[:i] + args[i + 2:]
            else:
                rest = args[:i] + args[i + 1:]
            return value, rest
    return None, args


def print_config(name: str, verb: Verb, what: str, args: list[str]) -> int:
    """``--cfg job``: the composed config of every cell the command would run (sweeps expanded)."""
    if what != "job":
        raise ConfigError(f"--cfg {what or '(nothing)'} is not supported; use --cfg job to print the composed config")
    if name == "kernels":
        from omegaconf import OmegaConf

        from benchmark.speed.kernel_bench import parser as kernel_parser

        print(OmegaConf.to_yaml(vars(kernel_parser().parse_args(args))), end="")
        return 0
    if verb.compose:
        overrides = [a for a in _default_comparison(name, expand_aliases(args)) if a != "-m"]
    else:
        from benchmark.launch.grid import split_args

        overrides = split_args([a for a in args if a != "-m"])
    flags = [a for a in overrides if a.startswith("-")]
    if flags:
        raise ConfigError(f"unexpected option {flags[0]!r} with --cfg job; pass overrides KEY=VALUE")
    from omegaconf import OmegaConf

    check_group_choices(overrides)
    cells = expand_sweep(overrides)
    for i, cell in enumerate(cells, start=1):
        if len(cells) > 1:
            print(f"# cell {i}/{len(cells)}: {' '.join(cell)}")
        print(OmegaConf.to_yaml(compose(cell)), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbs = _available_verbs()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, args = argv[0], argv[1:]
    if name not in verbs:
        return fail(str(Registry("verb", verbs).unknown(name)))
    verb = verbs[name]
    if ("-h" in args or "--help" in args) and not verb.own_help:
        print(verb_help(name, verb))
        return 0
    what, rest = _cfg_request(args)
    if what is not None:
        try:
            return print_config(name, verb, what, rest)
        except USER_ERRORS as exc:
            return fail(str(exc))
    if not verb.compose:
        try:
            return int(_resolve(verb.target)(args) or 0)
        except USER_ERRORS as exc:
            return fail(str(exc))
    args = _default_comparison(name, expand_aliases(args))
    overrides = [a for a in args if not a.startswith("-") and "=" in a]
    try:
        _precheck(overrides)
    except USER_ERRORS as exc:
        return fail(str(exc))
    return _launch_hydra(name, verb, args)


def _launch_hydra(name: str, verb: Verb, args: list[str]) -> int:
    import hydra

    from conf import CONF_DIR

    from benchmark.config import register_methods

    func = _resolve(verb.target)
    register_methods()

    def task(cfg):
        try:
            func(cfg)
        except USER_ERRORS as exc:
            sys.exit(fail(str(exc)))

    sys.argv = [f"benchmark {name}"] + args
    app = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(task)
    app()
    return 0
