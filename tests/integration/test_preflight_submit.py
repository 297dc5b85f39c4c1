"""Preflight through submit: a cell is checked before it is queued (real submit on the local launcher)."""

from __future__ import annotations

import pytest

from benchmark.config import ConfigError
from benchmark.launch.submit import submit_grid


def test_submit_runs_the_preflight_before_queueing(tmp_path):
    args = ["launcher=local", f"paths.runs={tmp_path}/runs", f"paths.results={tmp_path}/res",
            f"paths.cache={tmp_path}/cache", "preflight.device_memory_gb=0.000001"]
    with pytest.raises(ConfigError, match="needs ~.* GB per cpu device"):
        submit_grid(args, quiet=True)
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="size=S is a model for ImageNet latents"):
        submit_grid([*args[:-1], "size=S"], quiet=True)


def test_an_empty_data_folder_is_refused_before_anything_is_queued(tmp_path):
    (tmp_path / "data" / "n01").mkdir(parents=True)
    (tmp_path / "data" / "n02" / "deep").mkdir(parents=True)
    (tmp_path / "data" / "n01" / "a.png").write_bytes(b"")
    args = ["launcher=local", "data=imagenet", f"data.path={tmp_path}/data", "recipe=none", "data.num_classes=2",
            "size=debug", f"paths.runs={tmp_path}/runs", f"paths.results={tmp_path}/res"]
    with pytest.raises(ConfigError, match=r"imagefolder: '.*n02' holds no images"):
        submit_grid(args, quiet=True)
    assert not (tmp_path / "runs").exists()
    (tmp_path / "data" / "n02" / "deep" / "b.JPEG").write_bytes(b"")
    with pytest.raises(ConfigError, match="needs ~"):      # past the data check: on to the memory check
        submit_grid([*args, "preflight.device_memory_gb=0.000001"], quiet=True)
