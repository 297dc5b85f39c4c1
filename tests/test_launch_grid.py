"""Grid expansion for submit/status: sweeps -> validated cells, refusals before anything is queued."""
from __future__ import annotations

import pytest

from benchmark.config import ConfigError, compose
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
        assert cell.run_name == ref.run_name
        assert cell.config["method"]["name"] == ref.method.name
        assert cell.record == tmp_path / "results" / "runs" / f"{ref.run_name}.json"
        assert cell.run_dir == tmp_path / "runs" / ref.run_name
    assert len({c.run_name for c in cells}) == 4


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (cell,) = build_grid(["paths.runs=myruns", "paths.results=res"], cwd=tmp_path)
    assert cell.config["paths"]["runs"] == str(tmp_path / "myruns")
    assert cell.config["paths"]["results"] == str(tmp_path / "res")


def test_cells_sharing_a_run_folder_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"'train.lr=0.001' and 'train.lr=0.002' share the run folder"):
        build_grid(["train.lr=0.001,0.002", *paths(tmp_path)])
    # Putting the swept key into run_name separates them.
    cells = build_grid(["train.lr=0.001,0.002", "run_name=cell-${train.lr}", *paths(tmp_path)])
    assert [c.run_name for c in cells] == ["cell-0.001", "cell-0.002"]


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
