"""DiT backbone, registry and checkpoint loading (this suite's format and published DiT files)."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

import methods
from reference_models import random_state_dict, ref_forward, ref_pos_embed

torch.set_num_threads(2)

SIZE_TABLE = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


def expected_shapes(depth, d, p=2, c=4, classes=1000, tokens=256, learn_sigma=True):
    """Every tensor of a published DiT checkpoint, written out from the architecture."""
    oc = 2 * c if learn_sigma else c
    shapes = {
        "pos_embed": (1, tokens, d),
        "x_embedder.proj.weight": (d, c, p, p),
        "x_embedder.proj.bias": (d,),
        "t_embedder.mlp.0.weight": (d, 256),
        "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d),
        "t_embedder.mlp.2.bias": (d,),
        "y_embedder.embedding_table.weight": (classes + 1, d),
        "final_layer.linear.weight": (p * p * oc, d),
        "final_layer.linear.bias": (p * p * oc,),
        "final_layer.adaLN_modulation.1.weight": (2 * d, d),
        "final_layer.adaLN_modulation.1.bias": (2 * d,),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({
            b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
            b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
            b + "mlp.fc1.weight": (4 * d, d), b + "mlp.fc1.bias": (4 * d,),
            b + "mlp.fc2.weight": (d, 4 * d), b + "mlp.fc2.bias": (d,),
            b + "adaLN_modulation.1.weight": (6 * d, d), b + "adaLN_modulation.1.bias": (6 * d,),
        })
    return shapes


@pytest.mark.parametrize("size,published_millions", [("S", 33), ("B", 130), ("L", 458), ("XL", 675)])
def test_parameter_counts_and_published_naming(size, published_millions):
    depth, d, _ = SIZE_TABLE[size]
    with torch.device("meta"):
        model = methods.build_model("dit", size)
    shapes = expected_shapes(depth, d)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == shapes
    n = sum(p.numel() for p in model.parameters())
    assert n == sum(int(np.prod(s)) for s in shapes.values())
    assert abs(n / 1e6 - published_millions) < 0.6  # the paper rounds loosely (B/2 is 130.5M)
    if size == "XL":
        assert n == 675_129_632  # DiT-XL/2 as reported by the reference training script


def test_initialisation_follows_dit():
    model = methods.build_model("dit", "debug", input_size=8, in_channels=1, num_classes=10)
    for block in model.blocks:
        assert torch.count_nonzero(block.adaLN_modulation[-1].weight) == 0
    assert torch.count_nonzero(model.final_layer.linear.weight) == 0
    assert abs(model.y_embedder.embedding_table.weight.std().item() - 0.02) < 0.005
    assert not model.pos_embed.requires_grad
    grid = 8 // 2
    np.testing.assert_allclose(model.pos_embed[0].numpy(), ref_pos_embed(96, grid), atol=1e-6)
    # xavier-uniform bound sqrt(6/(fan_in+fan_out)) for qkv
    w = model.blocks[0].attn.qkv.weight
    assert w.abs().max() <= (6 / (96 + 288)) ** 0.5 + 1e-6 and w.abs().max() > 0.5 * (6 / (96 + 288)) ** 0.5


@pytest.mark.parametrize("patch", [1, 2, 4, 8])
def test_forward_shapes_and_unconditional(patch):
    model = methods.build_model("dit", "debug", patch_size=patch, input_size=16, in_channels=1, num_classes=0).eval()
    x = torch.randn(2, 1, 16, 16)
    out = model(x, torch.tensor([3, 900]), None)
    assert out.shape == (2, 2, 16, 16)
    out2, aux = model(x, 5.0, None, return_aux=True)
    assert out2.shape == (2, 2, 16, 16) and aux == {}
    small = methods.build_model("dit", "debug", patch_size=patch, input_size=16, in_channels=1, learn_sigma=False, num_classes=0)
    assert small(x, torch.tensor([3, 900])).shape == (2, 1, 16, 16)


def test_forward_matches_functional_reference():
    model = methods.build_model("dit", "debug", input_size=8, in_channels=2, num_classes=5).eval()
    sd = random_state_dict(model.state_dict(), seed=1)
    sd["pos_embed"] = model.pos_embed.detach().clone()
    model.load_state_dict(sd, strict=True)
    x, t, y = torch.randn(3, 2, 8, 8), torch.tensor([0, 417, 999]), torch.tensor([0, 4, 5])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), ref_forward(sd, x, t, y, heads=4), atol=1e-5, rtol=1e-5)


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = methods.build_model("dit", "debug", input_size=8, in_channels=1, num_classes=0)
    model.load_state_dict(random_state_dict(model.state_dict(), seed=2))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 600])

    def grads(enabled):
        model.zero_grad()
        model.set_grad_checkpointing(enabled)
        model(x, t).square().mean().backward()
        return [p.grad.clone() for p in model.parameters() if p.requires_grad]

    for a, b in zip(grads(False), grads(True)):
        torch.testing.assert_close(a, b)


def test_label_dropout_only_in_training():
    model = methods.build_model("dit", "debug", input_size=8, in_channels=1, num_classes=3, class_dropout_prob=0.5)
    model.load_state_dict(random_state_dict(model.state_dict(), seed=3))
    x, t, y = torch.randn(64, 1, 8, 8), torch.full((64,), 100), torch.zeros(64, dtype=torch.long)
    model.eval()
    with torch.no_grad():
        a = model(x, t, y)
        null = model(x, t, torch.full((64,), 3))
    assert torch.equal(a, model(x, t, y).detach())
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        b = model(x, t, y)
    dropped = torch.isclose(b, null, atol=1e-6).flatten(1).all(1)
    assert 10 < int(dropped.sum()) < 54  # ~half the labels replaced by the null class


# ----------------------------------------------------------------- registry / bad input
def test_build_kwargs_rebuild_same_architecture():
    model = methods.build_model("dtr", "debug", input_size=8, in_channels=1, num_classes=0, beta=0.5)
    rebuilt = methods.build_model(**model.build_kwargs)
    assert rebuilt.build_kwargs == model.build_kwargs
    assert model.build_kwargs["method_options"] == {"alpha": 4.0, "beta": 0.5, "num_tasks": 1000}


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(method="nope", size="S"), "unknown method 'nope'; valid: dit, dtr, switch_dit"),
        (dict(method="dit", size="XXL"), "unknown size 'XXL' (did you mean 'XL'?); valid: S, B, L, XL, debug"),
        (dict(method="dit", size="S", patch_size=3), "patch_size=3 does not divide input_size=32"),
        (dict(method="dit", size="S", num_classes=-1), "num_classes=-1"),
        (dict(method="dit", size="S", class_dropout_prob=1.0), "class_dropout_prob=1.0"),
        (dict(method="dit", size="S", alpha=2.0), "unknown option(s) ['alpha'] for method 'dit'"),
        (dict(method="dtr", size="S", gamma=2.0), "valid options: alpha, beta, num_tasks"),
    ],
)
def test_build_model_bad_input(kwargs, needle):
    with pytest.raises(ValueError) as err:
        with torch.device("meta"):
            methods.build_model(**kwargs)
    assert needle in str(err.value)


def test_size_lookup_is_case_insensitive():
    assert methods.size_name("xl") == "XL" and methods.size_name("DEBUG") == "debug"


def test_forward_bad_input():
    model = methods.build_model("dit", "debug", input_size=8, in_channels=1, num_classes=3).eval()
    with pytest.raises(ValueError, match=r"x has shape \(2, 3, 8, 8\); expected \(N, 1, 8, 8\)"):
        model(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"y \(class labels\) is required"):
        model(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), None)
    with pytest.raises(ValueError, match=r"t has shape \(3,\)"):
        model(torch.randn(2, 1, 8, 8), torch.tensor([1, 2, 3]), torch.tensor([0, 1]))


# ----------------------------------------------------------------- checkpoints
def _dit_with_random_weights(**kw):
    model = methods.build_model("dit", "debug", **kw).eval()
    sd = random_state_dict(model.state_dict(), seed=5)
    sd["pos_embed"] = model.pos_embed.detach().clone()
    model.load_state_dict(sd)
    return model, sd


def test_suite_checkpoint_round_trip_prefers_ema(tmp_path):
    model, _ = _dit_with_random_weights(input_size=8, in_channels=1, num_classes=4)
    ema, _ = _dit_with_random_weights(input_size=8, in_channels=1, num_classes=4)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.1)
    path = methods.save_checkpoint(tmp_path / "ck.pt", model, ema=ema, step=7, config={"lr": 1e-4}, rng={"torch": torch.get_rng_state()})
    raw = methods.read_checkpoint(path)
    assert raw["format"] == methods.CHECKPOINT_FORMAT and raw["step"] == 7 and raw["build"]["method"] == "dit"
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([5, 700]), torch.tensor([1, 3])
    loaded = methods.load_checkpoint(path)
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, y), ema(x, t, y), atol=0, rtol=0)
        torch.testing.assert_close(methods.load_checkpoint(path, use_ema=False)(x, t, y), model(x, t, y), atol=0, rtol=0)
    with pytest.raises(ValueError, match="is a 'dit' checkpoint; it cannot be loaded as 'switch_dit'"):
        methods.load_checkpoint(path, method="switch_dit")
    with pytest.raises(ValueError, match="is a size-debug checkpoint, not size S"):
        methods.load_checkpoint(path, size="S")


def test_published_bare_state_dict_loads_strictly(tmp_path):
    model, sd = _dit_with_random_weights(input_size=16, in_channels=4, num_classes=1000)
    path = tmp_path / "DiT-debug-2-128x128.pt"
    torch.save(sd, path)
    with pytest.raises(ValueError, match="pass method= and size="):
        methods.load_checkpoint(path)
    loaded = methods.load_checkpoint(path, method="dit", size="debug")
    assert loaded.build_kwargs["input_size"] == 16 and loaded.build_kwargs["num_classes"] == 1000
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([5, 700]), torch.tensor([1, 1000])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, y), ref_forward(sd, x, t, y, heads=4), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"has depth 4 and hidden size 96 \(size debug\), not size S"):
        methods.load_checkpoint(path, method="dit", size="S")
    with pytest.raises(ValueError, match=r"shape mismatch .*x_embedder.proj.weight: checkpoint \(96, 4, 2, 2\) vs model \(96, 4, 4, 4\)"):
        methods.load_checkpoint(path, method="dit", size="debug", patch_size=4)


def test_dit_train_py_checkpoint_with_namespace_args(tmp_path):
    model, sd = _dit_with_random_weights(input_size=8, in_channels=4, num_classes=10)
    other = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    args = argparse.Namespace(model="DiT-S/2", image_size=64, num_classes=10, results_dir="results")
    opt = torch.optim.AdamW(model.parameters()).state_dict()
    path = tmp_path / "0000100.pt"
    torch.save({"model": other, "ema": sd, "opt": opt, "args": args}, path)
    assert methods.read_checkpoint(path)["args"]["model"] == "DiT-S/2"
    loaded = methods.load_checkpoint(path, method="dit", size="debug")
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([5, 700]), torch.tensor([1, 9])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, y), model(x, t, y), atol=0, rtol=0)


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "hook": np.random.RandomState(0)}, path)  # an arbitrary class
    with pytest.raises(ValueError, match="cannot load .* safely"):
        methods.load_checkpoint(path, method="dit", size="debug")


def test_failed_checkpoint_save_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    model, _ = _dit_with_random_weights(input_size=8, in_channels=1, num_classes=4)
    path = methods.save_checkpoint(tmp_path / "ck.pt", model, step=1)
    before = path.read_bytes()

    def half_write(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"PK partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        methods.save_checkpoint(path, model, step=2)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]


def _naive_routed_block(block, x, c, delta):
    """The routed block exactly as the papers write it: r = x·m; r += A(r); r += M(r); r + (1 − m)·x."""
    sh1, sc1, g1, sh2, sc2, g2 = block.adaLN_modulation(c).chunk(6, dim=1)
    m = 1 + delta
    r = x * m
    r = r + g1[:, None] * block.attn(block.norm1(r) * (1 + sc1[:, None]) + sh1[:, None])
    r = r + g2[:, None] * block.mlp(block.norm2(r) * (1 + sc2[:, None]) + sh2[:, None])
    return r + (1 - m) * x


@pytest.mark.parametrize("delta_shape", [(3, 5, 16), (3, 1, 16)], ids=["per-token (Switch-DiT)", "per-sample (DTR)"])
def test_routed_block_equals_the_papers_formula_forward_and_backward(delta_shape):
    from kernels import apply_mask
    from methods.layers import DiTBlock

    gen = torch.Generator().manual_seed(0)
    block = DiTBlock(16, 4).double()
    for p in block.parameters():
        p.data = torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.3
    x = torch.randn(3, 5, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    delta = (torch.randn(delta_shape, generator=gen, dtype=torch.float64) * 0.5).requires_grad_()
    got = block(x, c, apply_mask(x, delta))
    want = _naive_routed_block(block, x, c, delta)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    gy = torch.randn(got.shape, generator=gen, dtype=torch.float64)
    inputs = (x, c, delta, *block.parameters())
    for a, b in zip(torch.autograd.grad(got, inputs, gy), torch.autograd.grad(want, inputs, gy)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # With δ = 0 the routed block is the plain DiT block.
    torch.testing.assert_close(block(x, c, apply_mask(x, torch.zeros_like(delta))), block(x, c), rtol=1e-12, atol=1e-12)



def test_routed_block_under_bf16_autocast_tracks_float32():
    """Under autocast the branch outputs are bf16 and the stream float32: the custom backward
    functions must hand each input a gradient of its own dtype, and agree with float32."""
    from kernels import apply_mask
    from methods.layers import DiTBlock

    gen = torch.Generator().manual_seed(2)
    block = DiTBlock(32, 4)
    for p in block.parameters():
        p.data = torch.randn(p.shape, generator=gen) * 0.2
    x = torch.randn(2, 6, 32, generator=gen, requires_grad=True)
    c = torch.randn(2, 32, generator=gen)
    delta = (torch.randn(2, 6, 32, generator=gen) * 0.5).requires_grad_()
    gy = torch.randn(2, 6, 32, generator=gen)
    want = torch.autograd.grad(_naive_routed_block(block, x, c, delta), (x, delta), gy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x, c, apply_mask(x, delta.bfloat16()))
    assert out.dtype == torch.float32
    got = torch.autograd.grad(out, (x, delta), gy)
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.05 * b.abs().max().item())
