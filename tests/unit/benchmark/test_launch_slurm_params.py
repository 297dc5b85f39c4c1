"""SLURM resources, scripts, state parsing and refusals that need no running cluster."""
from __future__ import annotations

import copy

import pytest
from omegaconf import OmegaConf

from benchmark import cli
from benchmark.config import ConfigError
from benchmark.launch import slurm
from benchmark.launch.grid import build_grid
from benchmark.launch.submit import check_time_limits
from conf import CONF_DIR


def launcher(**changes) -> dict:
    """conf/launcher/slurm.yaml as a container, with dotted keys changed."""
    cfg = OmegaConf.load(CONF_DIR / "launcher" / "slurm.yaml")
    for key, value in changes.items():
        OmegaConf.update(cfg, key.replace("__", "."), value)
    return OmegaConf.to_container(cfg)


def sbatch_flags(text: str) -> dict[str, str]:
    flags = {}
    for line in text.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line[len("#SBATCH --"):].partition("=")
            flags[key] = value
    return flags


def test_training_takes_a_whole_8_gpu_node_with_one_rank_per_gpu(tmp_path):
    params = slurm.stage_parameters(launcher(), "train")
    flags = sbatch_flags(slurm.sbatch_script(tmp_path, params, num_tasks=3))
    assert flags["gpus-per-node"] == "8" and flags["ntasks-per-node"] == "8" and flags["nodes"] == "1"
    assert flags["signal"] == "USR2@120"
    assert flags["time"] == "2880"
    assert flags["array"] == "0-2%3"       # three cells, all may run at once (parallelism 64)
    assert "partition" not in flags and "account" not in flags


def test_multi_node_partition_account_qos_memory(tmp_path):
    lc = launcher(stages__train__nodes=4, slurm__partition="gpu", slurm__account="proj", slurm__qos="high",
                  stages__train__mem_gb=480, slurm__constraint="a100", slurm__array_parallelism=2,
                  slurm__additional={"reservation": "bench"})
    flags = sbatch_flags(slurm.sbatch_script(tmp_path, slurm.stage_parameters(lc, "train"), num_tasks=5))
    assert flags["nodes"] == "4" and flags["ntasks-per-node"] == "8"
    assert (flags["partition"], flags["account"], flags["qos"]) == ("gpu", "proj", "high")
    assert flags["mem"] == "480GB" and flags["constraint"] == "a100" and flags["reservation"] == "bench"
    assert flags["array"] == "0-4%2"


def test_cpu_only_cells_request_no_gpus_and_one_rank(tmp_path):
    lc = launcher(slurm__gpus_per_node=0)
    for stage in ("train", "sample", "evaluate"):
        params = slurm.stage_parameters(lc, stage)
        flags = sbatch_flags(slurm.sbatch_script(tmp_path, params, num_tasks=1))
        assert "gpus-per-node" not in flags and "gres" not in flags
        assert flags["ntasks-per-node"] == "1"
        assert "array" not in flags


def test_evaluation_uses_one_gpu_of_a_gpu_node():
    assert slurm.stage_parameters(launcher(), "evaluate")["gpus_per_node"] == 1
    assert slurm.stage_parameters(launcher(), "evaluate")["ntasks_per_node"] == 1
    assert slurm.stage_parameters(launcher(), "sample")["gpus_per_node"] == 8


def test_dependency_follows_the_same_array_task():
    assert slurm.dependency_on(["41"]) == "afterok:41"
    assert slurm.dependency_on(["41_0", "41_1", "41_2"]) == "aftercorr:41"


def test_parse_states_expands_arrays_and_skips_steps():
    text = "\n".join([
        "12_0|COMPLETED", "12_0.batch|COMPLETED", "12_1|CANCELLED by 0", "12_[3-5,7%2]|PENDING",
        "13|RUNNING", "13.0|RUNNING", "", "garbage line"])
    assert slurm.parse_states(text) == {"12_0": "COMPLETED", "12_1": "CANCELLED", "12_3": "PENDING",
                                        "12_4": "PENDING", "12_5": "PENDING", "12_7": "PENDING",
                                        "13": "RUNNING"}


@pytest.mark.parametrize("state, cls", [("PENDING", "pending"), ("REQUEUED", "pending"), ("RUNNING", "running"),
                                        ("COMPLETED", "completed"), ("CANCELLED", "failed"),
                                        ("TIMEOUT", "failed"), ("OUT_OF_MEMORY", "failed"),
                                        ("NODE_FAIL", "failed"), ("", "unknown"), ("WHATEVER", "unknown")])
def test_state_classes(state, cls):
    assert slurm.state_class(state) == cls


@pytest.mark.parametrize("text, reason", [
    ("sbatch: error: invalid partition specified: nope\nallocation failure: Invalid partition name specified",
     "Invalid partition name specified"),
    ("sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified",
     "Invalid account or account/partition combination specified"),
    ("sbatch: error: Invalid generic resource (gres) specification", "Invalid generic resource (gres) specification"),
])
def test_slurm_reason_keeps_the_informative_line(text, reason):
    assert slurm.slurm_reason(text) == reason


def test_array_size_limit_from_scontrol_show_config():
    text = "Configuration data as of 2026-01-01T00:00:00\nMaxArraySize            = 4\nMaxJobCount = 10000\n"
    conf = slurm.parse_show_config(text)
    assert slurm.max_array_size(conf) == 4
    assert slurm.max_array_size({}) == 1001  # SLURM's default when the key is absent
    slurm.check_array_size(4, 4)
    with pytest.raises(ConfigError, match=r"5 cells to submit, but this cluster's MaxArraySize=4"):
        slurm.check_array_size(5, 4)


def _cells(tmp_path, *extra):
    return build_grid(["launcher=slurm", f"paths.runs={tmp_path}/runs", f"paths.results={tmp_path}/results",
                       "train.iterations=1000", "train.ckpt_every=600", *extra])


def test_time_limit_shorter_than_a_checkpoint_interval_is_refused_with_numbers(tmp_path):
    cells = _cells(tmp_path, "launcher.stages.train.time_min=9", "launcher.stages.train.sec_per_step=1.0")
    lc = cells[0].config["launcher"]
    with pytest.raises(ConfigError, match=r"time_min=9 min is shorter than one checkpoint interval .*"
                                          r"600 steps \(train.ckpt_every\) x 1 s/step .* = 10.0 min"):
        check_time_limits(cells, lc)
    ok = copy.deepcopy(lc)
    ok["stages"]["train"]["time_min"] = 10
    assert check_time_limits(cells, ok) == []


def test_time_limit_check_uses_a_measured_step_time_or_says_it_skipped(tmp_path):
    cells = _cells(tmp_path, "launcher.stages.train.time_min=5")
    lc = cells[0].config["launcher"]
    (note,) = check_time_limits(cells, lc)
    assert "not checked" in note and "sec_per_step" in note
    run_dir = cells[0].run_dir
    run_dir.mkdir(parents=True)
    # 0.5 steps/s -> 2 s/step -> 600 steps = 20 min > 5 min
    (run_dir / "metrics.jsonl").write_text('{"step": 50, "steps_per_sec": 4.0}\n{"step": 100, "steps_per_sec": 0.5}\n')
    with pytest.raises(ConfigError, match=r"x 2 s/step \(measured in .*metrics.jsonl\) = 20.0 min"):
        check_time_limits(cells, lc)


def test_signal_delay_must_be_shorter_than_every_time_limit(tmp_path):
    cells = _cells(tmp_path, "launcher.stages.evaluate.time_min=2", "launcher.slurm.signal_delay_s=120")
    with pytest.raises(ConfigError, match=r"signal_delay_s=120 is not shorter than launcher.stages.evaluate"
                                          r".time_min=2 min \(120 s\)"):
        check_time_limits(cells, cells[0].config["launcher"])


def test_submit_without_slurm_binaries_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no sbatch, srun, scontrol
    code = cli.main(["submit", "launcher=slurm", f"paths.runs={tmp_path}/runs", f"paths.results={tmp_path}/res"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0
    assert "launcher=slurm needs a SLURM cluster" in err and "sbatch" in err and "launcher=local" in err
    assert not (tmp_path / "runs" / ".submissions").exists()
