"""Grid expansion for submit/status: sweeps -> validated cells, refusals before anything is queued."""
from __future__ import annotations

import pytest

from benchmark.config import ConfigError, compose
from benchmark.identity import cell_identity
from benchmark.launch.grid import build_grid, expand_aliases, split_args


def paths(tmp_path) -> list[str]:
    return [f"paths.runs={tmp_path}/runs", f"paths.results={tmp_path}/results",
            f"paths.reports={tmp_path}/reports", f"paths.cache={tmp_path}/cache"]


def test_sweep_expands_to_composed_cells_in_hydra_order(tmp_path):
    cells = build_grid(["method=dit,dtr", "seed=0,1", *paths(tmp_path)])
    assert [c.overrides for c in cells] == [
        ("method=dit", "seed=0"), ("method=dit", "seed=1"), ("method=dtr", "seed=0"), ("method=dtr", "seed=1")]
    for cell in cells:
        # Independent reference: compose the same cell directly.
        ref = compose([*cell.overrides, *paths(tmp_path)])
        ident = cell_identity(ref)
        assert cell.run_id == ident.run_id and cell.run_id.startswith(ref.run_name + "-")
        assert cell.config["method"]["name"] == ref.method.name
        assert cell.record == tmp_path / "results" / "runs" / ident.run_id / f"{ident.eval_id}.json"
        assert cell.run_dir == tmp_path / "runs" / ident.run_id
        assert cell.key == f"{ident.run_id}/{ident.eval_id}"
    assert len({c.run_id for c in cells}) == 4


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (cell,) = build_grid(["paths.runs=myruns", "paths.results=res"], cwd=tmp_path)
    assert cell.config["paths"]["runs"] == str(tmp_path / "myruns")
    assert cell.config["paths"]["results"] == str(tmp_path / "res")


def test_swept_protocol_keys_get_their_own_run_folders(tmp_path):
    # A swept training key is part of the identity: its cells train into different folders.
    cells = build_grid(["train.lr=0.001,0.002", *paths(tmp_path)])
    assert len({c.run_dir for c in cells}) == 2 and len({c.record for c in cells}) == 2


def test_cells_of_one_identity_or_one_training_run_are_refused(tmp_path):
    # moe_backend computes the same function: not part of the identity, so the cells are one cell.
    with pytest.raises(ConfigError, match="are the same cell .*NOT_IDENTITY"):
        build_grid(["method=switch_dit", "method.options.moe_backend=torch,auto", *paths(tmp_path)])
    # Different sampling of one training run would train it twice at once.
    with pytest.raises(ConfigError, match="share the training run .* submit those settings one after the other"):
        build_grid(["sample.num_samples=8,16", *paths(tmp_path)])


def test_missing_data_path_refuses_the_grid_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="data.path is required for data=imagenet"):
        build_grid(["method=dit,dtr", "data=digits,imagenet", *paths(tmp_path)])
    assert not (tmp_path / "runs").exists()


def test_launch_aliases_map_to_launcher_keys(tmp_path):
    assert expand_aliases(["nodes=4", "partition=gpu", "account=proj", "seed=1"]) == [
        "launcher.stages.train.nodes=4", "launcher.slurm.partition=gpu", "launcher.slurm.account=proj", "seed=1"]
    (cell,) = build_grid(["launcher=slurm", "nodes=2", "qos=high", *paths(tmp_path)])
    assert cell.config["launcher"]["stages"]["train"]["nodes"] == 2
    assert cell.config["launcher"]["slurm"]["qos"] == "high"


@pytest.mark.parametrize("bad, message", [(["-m", "seed=0"], "unexpected option '-m'"),
                                          (["seed"], "argument 'seed' is not an override")])
def test_flags_and_bare_words_are_refused(bad, message):
    with pytest.raises(ConfigError, match=message):
        split_args(bad)


def test_swept_launcher_settings_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="launcher settings cannot be swept"):
        build_grid(["launcher=slurm", "launcher.slurm.partition=a,b", *paths(tmp_path)])
