"""The checkpoint format has one owner (rsst_tune/checkpoint.py): versioned, complete, safe."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rsst_tune import checkpoint as ckpt
from rsst_tune.errors import ConfigError
from rsst_tune.loop import PruneLoop


def _two_states(make_cfg, digits_small, tmp_path):  # type: ignore[no-untyped-def]
    cfg = make_cfg(model="vit_digits", method="rsst", head_ratio=0.25, mlp_ratio=0.5)
    loop = PruneLoop(cfg.replace(pruning_times=3), tmp_path, data=digits_small)
    it = loop.states()
    next(it), next(it)
    return loop


def test_what_the_loop_writes_is_what_trialcheckpoint_reads(
    make_cfg, digits_small, tmp_path
) -> None:
    loop = _two_states(make_cfg, digits_small, tmp_path)
    assert [p.name for p in ckpt.state_files(tmp_path)] == ["state_00.pt", "state_01.pt"]
    assert ckpt.latest_state_file(tmp_path) == tmp_path / "state_01.pt"
    assert ckpt.state_of(tmp_path / "state_01.pt") == 1 and ckpt.state_of("x.pt") is None
    saved = ckpt.TrialCheckpoint.load(tmp_path / "state_01.pt")
    raw = torch.load(tmp_path / "state_01.pt", weights_only=True)
    # every key written is a field, and every field is written (nobody keeps a stale list)
    assert set(raw) == {f.name for f in dataclasses.fields(ckpt.TrialCheckpoint)} | {"version"}
    assert raw["version"] == ckpt.VERSION
    assert saved.state == 1 and saved.next_state == 2
    assert saved.config == loop.cfg.to_dict()
    assert [r["state"] for r in saved.results] == [0, 1]
    for name, mask in saved.M.items():
        assert torch.equal(mask, loop.M[name].cpu())
    assert saved.theta0 == ckpt.THETA0_FILE
    assert set(ckpt.load_theta0(tmp_path)) == set(saved.model)


def test_an_unknown_version_or_an_incomplete_file_is_one_clear_line(
    make_cfg, digits_small, tmp_path
) -> None:
    _two_states(make_cfg, digits_small, tmp_path)
    path = tmp_path / "state_01.pt"
    raw = torch.load(path, weights_only=True)
    torch.save({**raw, "version": 99}, path)
    with pytest.raises(ConfigError) as err:
        ckpt.TrialCheckpoint.load(path)
    assert "format version 99" in str(err.value) and "reads version" in str(err.value)
    assert "\n" not in str(err.value)
    del raw["M"]
    torch.save(raw, path)
    with pytest.raises(ConfigError, match=r"incomplete \(missing: M\)"):
        ckpt.TrialCheckpoint.load(path)
    torch.save([1, 2], path)
    with pytest.raises(ConfigError, match="not an rsst-tune state checkpoint"):
        ckpt.TrialCheckpoint.load(path)
    with pytest.raises(ConfigError, match="not found"):
        ckpt.TrialCheckpoint.load(tmp_path / "state_07.pt")
