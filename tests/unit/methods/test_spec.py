"""Each method is one MethodSpec in its own file; the config node, the converters and the
report read it, and options that follow the diffusion are filled from it."""
from __future__ import annotations

import pytest
import torch

import methods
from benchmark.config import compose, method_options
from benchmark.runs_report import model_label
from methods.converters import detect_method, official_build_kwargs


def test_the_three_methods_are_specs_in_registration_order():
    assert methods.METHODS.names() == ["dit", "dtr", "switch_dit"]
    assert [methods.method_spec(n).display for n in methods.METHODS] == ["DiT", "DTR", "Switch-DiT"]
    assert methods.baseline().name == "dit"
    assert model_label("switch_dit", "XL") == "Switch-DiT-XL" and model_label("unknown", "S", 4) == "unknown-S/4"


@pytest.mark.parametrize("name", ["dit", "dtr", "switch_dit"])
def test_the_config_node_is_the_options_table(name):
    spec = methods.method_spec(name)
    node = spec.config_node()
    assert node["name"] == name
    # every option but the ones that follow another key, with the defaults of the OPTIONS table
    expected = {k: o.default for k, o in spec.model.OPTIONS.items() if o.follows is None}
    assert node["options"] == expected
    assert "num_tasks" not in node["options"]
    cfg = compose([f"method={name}"])
    assert dict(cfg.method.options or {}) == expected
    assert methods.validate_options(name, **method_options(cfg)) == methods.validate_options(name)


@pytest.mark.parametrize("name", ["dtr", "switch_dit"])
def test_num_tasks_follows_the_diffusion(name):
    cfg = compose([f"method={name}", "diffusion.num_timesteps=500", "sample.steps=10"])
    assert method_options(cfg)["num_tasks"] == 500
    with torch.device("meta"):
        model = methods.build_model(name, "debug", input_size=8, in_channels=1, num_classes=10, **method_options(cfg))
    assert model.num_tasks == 500


def test_a_spec_must_name_a_dit_subclass_and_a_free_name():
    with pytest.raises(TypeError, match="subclass of methods.dit.DiT"):
        methods.register_method(methods.MethodSpec("bad", "Bad", torch.nn.Linear))
    with pytest.raises(ValueError, match="method 'dit' is already registered"):
        methods.register_method(methods.MethodSpec("dit", "DiT again", methods.method_spec("dit").model))


def test_converters_ask_the_specs():
    assert detect_method({"blocks.0.attn.qkv.weight": torch.zeros(1)}) == ("dit", False)
    assert detect_method({"routers.3._unit_mapping": torch.zeros(1)}) == ("dtr", True)
    assert detect_method({"routers.0.f_gate.1.weight": torch.zeros(1)}) == ("switch_dit", True)
    assert detect_method({"routers.0.gate.1.weight": torch.zeros(1)}) == ("switch_dit", False)
    config = {"models": {"name": "DiT-B/2", "param": {"latent_size": 32}},
              "routing": {"name": "DMoE", "param": {"num_experts": 4, "k": 2}, "w_JSD": 0.5, "taskcount": 1000}}
    build = official_build_kwargs(config)
    assert build["method"] == "switch_dit" and build["method_options"]["num_experts"] == 4
    with pytest.raises(ValueError, match="routing.name='Other'; supported: 'DTR', 'DMoE'"):
        official_build_kwargs({**config, "routing": {"name": "Other"}})
