"""Method plugins for the DiT · DTR · Switch-DiT benchmark.

Public API:
    build_model(method, size, *, patch_size=2, input_size=32, in_channels=4,
                num_classes=1000, learn_sigma=True, class_dropout_prob=0.1, **method_options)
    validate_options(method, **options) -> dict
    load_checkpoint(path, method=None, size=None, *, use_ema=True, **build_kw)
    save_checkpoint(path, model, *, ema=None, step=0, config=None, opt=None, rng=None)
    METHODS, SIZES, register_method(MethodSpec(...)), method_spec(name)
"""
from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint, make_checkpoint, read_checkpoint, save_checkpoint, unwrap_model
from .registry import METHODS, SIZES, build_model, register_method, size_name, validate_options
from .spec import MethodSpec, OfficialCheckpoint, baseline, display_name, method_spec

__all__ = [
    "CHECKPOINT_FORMAT",
    "METHODS",
    "MethodSpec",
    "OfficialCheckpoint",
    "SIZES",
    "baseline",
    "build_model",
    "display_name",
    "load_checkpoint",
    "make_checkpoint",
    "method_spec",
    "read_checkpoint",
    "register_method",
    "save_checkpoint",
    "size_name",
    "unwrap_model",
    "validate_options",
]
