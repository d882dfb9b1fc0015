"""`amp`/`compile` auto (`rsst_tune.numerics`): the probe's decision, its on-disk cache, and
that a user's amp/compile win. The probe itself needs CUDA (tests/test_gpu.py); here it is
a counting function with the timings injected."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from rsst_tune import numerics
from rsst_tune.config import TrialConfig
from rsst_tune.data import DataBundle
from rsst_tune.dense_cache import dense_key
from rsst_tune.errors import ConfigError
from rsst_tune.numerics import (
    BF16,
    BF16_GRAPHS,
    FP32,
    NumericsCache,
    Probe,
    choose,
    decide,
    probe_key,
)

CUDA = torch.device("cuda")  # a device object only: nothing runs on it here


class CountingProbe:
    """A probe with fixed timings that counts its calls."""

    def __init__(self, timings: Mapping[str, Probe], delay_s: float = 0.0) -> None:
        self.timings = dict(timings)
        self.calls = 0
        self.delay_s = delay_s

    def __call__(self) -> dict[str, Probe]:
        self.calls += 1
        time.sleep(self.delay_s)
        return dict(self.timings)


FAST_GRAPHS = {FP32: Probe(1203.0, True), BF16: Probe(1180.0, True), BF16_GRAPHS: Probe(3040, True)}


# ---------------------------------------------------------------------- choose (pure)
def test_the_fastest_finite_candidate_wins() -> None:
    assert choose(FAST_GRAPHS) == BF16_GRAPHS
    assert choose({FP32: Probe(1000, True), BF16: Probe(1500, True)}) == BF16
    assert choose({FP32: Probe(2000, True), BF16: Probe(1500, True)}) == FP32


def test_a_non_finite_candidate_is_never_chosen() -> None:
    timings = {**FAST_GRAPHS, BF16_GRAPHS: Probe(9999.0, False)}
    assert choose(timings) == FP32  # 1203 vs bf16's 1180: within the tie, the simpler
    assert choose({FP32: Probe(100, False), BF16: Probe(50, True)}) == BF16
    assert choose({FP32: Probe(100, True), BF16: Probe(float("nan"), True)}) == FP32
    assert choose({FP32: Probe(100, True), BF16_GRAPHS: Probe(0.0, False)}) == FP32  # failed


def test_all_non_finite_falls_back_to_fp32() -> None:
    assert choose({name: Probe(1000.0, False) for name in numerics.CANDIDATES}) == FP32
    assert choose({}) == FP32


def test_ties_prefer_the_simpler_candidate() -> None:
    same = {name: Probe(1000.0, True) for name in numerics.CANDIDATES}
    assert choose(same) == FP32
    assert choose({BF16: Probe(1000.0, True), BF16_GRAPHS: Probe(1000.0, True)}) == BF16
    near = 1000.0 * (1 + numerics.TIE) * 0.999  # within the tie margin
    assert choose({FP32: Probe(1000.0, True), BF16: Probe(near, True)}) == FP32
    beyond = 1000.0 * (1 + numerics.TIE) * 1.01
    assert choose({FP32: Probe(1000.0, True), BF16: Probe(beyond, True)}) == BF16


def test_the_label_names_the_choice_and_the_probe() -> None:
    decision = numerics.from_choice(BF16_GRAPHS, FAST_GRAPHS)
    assert (decision.amp, decision.compile, decision.compile_mode) == (
        True,
        True,
        "reduce-overhead",
    )
    assert decision.label("ignored") == (
        "auto: bf16+cudagraphs (probe fp32 1,203 img/s, bf16 1,180, bf16+graphs 3,040)"
    )
    bad = numerics.from_choice(FP32, {FP32: Probe(10.0, True), BF16: Probe(5.0, False)})
    assert bad.label("") == "auto: fp32 (probe fp32 10 img/s, bf16 non-finite loss)"
    # a candidate that raised (a compile error, out of memory) is labelled failed, not NaN
    broken = {FP32: Probe(10.0, True), BF16_GRAPHS: Probe(0.0, False, failed=True)}
    assert numerics.from_choice(FP32, broken).label("") == (
        "auto: fp32 (probe fp32 10 img/s, bf16+graphs failed)"
    )
    assert Probe.from_dict(Probe(0.0, False, failed=True).to_dict()).failed
    assert not Probe.from_dict({"images_per_s": 1.0, "finite": True}).failed  # older caches
    assert numerics.fixed(TrialConfig(amp=False)).label("fp32") == "fp32"


# ---------------------------------------------------------------------- the cache
def test_the_cache_is_reused_and_survives_on_disk(tmp_path: Path) -> None:
    """The second call (another cache object on the same folder, as another trial) does not
    probe; the file is readable JSON with the key, the choice and the probe's numbers."""
    probe = CountingProbe(FAST_GRAPHS)
    key = probe_key(TrialConfig(model="vit_tiny", dataset="cifar10"), 32, "NVIDIA H100", "2.14")
    first = NumericsCache(tmp_path).get_or_probe(key, probe)
    second = NumericsCache(tmp_path).get_or_probe(key, probe)
    assert probe.calls == 1
    assert first == (BF16_GRAPHS, FAST_GRAPHS, True)
    assert second == (BF16_GRAPHS, FAST_GRAPHS, False)
    saved = json.loads((tmp_path / numerics.CACHE_FILE).read_text())
    assert saved["entries"][key]["choice"] == BF16_GRAPHS
    assert saved["entries"][key]["probes"][FP32] == {
        "images_per_s": 1203.0,
        "finite": True,
        "failed": False,
    }
    assert not (tmp_path / f"{numerics.CACHE_FILE}.lock").exists()  # released
    other = probe_key(TrialConfig(model="vit_tiny", dataset="cifar10"), 64, "NVIDIA H100", "2.14")
    NumericsCache(tmp_path).get_or_probe(other, probe)
    assert probe.calls == 2
    assert set(json.loads((tmp_path / numerics.CACHE_FILE).read_text())["entries"]) == {
        key,
        other,
    }


def test_the_key_is_model_image_size_batch_gpu_and_torch() -> None:
    cfg = TrialConfig(model="vit_tiny", dataset="cifar10", batch_size=256)
    base = probe_key(cfg, 32, "NVIDIA H100 80GB HBM3", "2.14.0")
    assert base == "vit_tiny on cifar10 at 32px, batch 256, NVIDIA H100 80GB HBM3, torch 2.14.0"
    others = [
        probe_key(cfg.replace(model="vit_digits"), 32, "NVIDIA H100 80GB HBM3", "2.14.0"),
        probe_key(cfg, 64, "NVIDIA H100 80GB HBM3", "2.14.0"),
        probe_key(cfg.replace(batch_size=128), 32, "NVIDIA H100 80GB HBM3", "2.14.0"),
        probe_key(cfg, 32, "NVIDIA A100-SXM4-80GB", "2.14.0"),
        probe_key(cfg, 32, "NVIDIA H100 80GB HBM3", "2.15.0"),
    ]
    assert len({base, *others}) == 6
    # what does not change the step's speed does not split the cache
    assert base == probe_key(cfg.replace(lr=0.1, method="imp", seed=3), 32,
                             "NVIDIA H100 80GB HBM3", "2.14.0")  # fmt: skip
    assert str(torch.__version__) in probe_key(cfg, 32, "x")


def test_one_trial_probes_while_the_others_wait(tmp_path: Path) -> None:
    """Trials that start together: one takes the lock and probes, the others read its answer."""
    probe = CountingProbe(FAST_GRAPHS, delay_s=0.5)
    answers: list[tuple[str, dict[str, Probe], bool]] = []

    def trial() -> None:
        answers.append(NumericsCache(tmp_path, poll_s=0.05).get_or_probe("k", probe))

    threads = [threading.Thread(target=trial) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert probe.calls == 1
    assert sorted(a[2] for a in answers) == [False, False, True]
    assert {a[0] for a in answers} == {BF16_GRAPHS}


def test_an_unreadable_cache_is_probed_again_and_rewritten(tmp_path: Path) -> None:
    (tmp_path / numerics.CACHE_FILE).write_text("{not json")
    probe = CountingProbe({FP32: Probe(10.0, True)})
    assert NumericsCache(tmp_path).get_or_probe("k", probe)[0] == FP32
    assert probe.calls == 1
    assert (
        json.loads((tmp_path / numerics.CACHE_FILE).read_text())["entries"]["k"]["choice"] == FP32
    )


def test_without_a_folder_the_cache_is_the_process_memory() -> None:
    cache = NumericsCache(None)
    probe = CountingProbe(FAST_GRAPHS)
    assert cache.get_or_probe("k", probe)[2] is True
    assert cache.get_or_probe("k", probe)[2] is False
    assert probe.calls == 1


# ---------------------------------------------------------------------- who decides
def test_auto_on_cuda_probes_and_trains_with_the_choice(tmp_path: Path) -> None:
    probe = CountingProbe(FAST_GRAPHS)
    cache = NumericsCache(tmp_path)
    decision = decide(TrialConfig(), CUDA, key=lambda: "k", probe=probe, cache=cache)
    assert (decision.amp, decision.compile, decision.compile_mode) == (
        True,
        True,
        "reduce-overhead",
    )
    assert decision.choice == BF16_GRAPHS and probe.calls == 1
    again = decide(TrialConfig(), CUDA, key=lambda: "k", probe=probe, cache=cache)
    assert again == decision and probe.calls == 1


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"amp": False}, (False, False, "default")),
        ({"amp": True}, (True, False, "default")),
        ({"compile": False}, (True, False, "default")),
        ({"compile": True, "compile_mode": "max-autotune"}, (True, True, "max-autotune")),
        ({"amp": False, "compile": True}, (False, True, "default")),
    ],
)
def test_a_given_amp_or_compile_wins_over_auto(
    given: dict[str, object], expected: tuple[bool, bool, str], tmp_path: Path
) -> None:
    probe = CountingProbe(FAST_GRAPHS)
    cfg = TrialConfig.from_dict(given)
    assert not cfg.numerics_auto
    decision = decide(cfg, CUDA, key=lambda: "k", probe=probe, cache=NumericsCache(tmp_path))
    assert (decision.amp, decision.compile, decision.compile_mode) == expected
    assert decision.choice is None and probe.calls == 0
    assert not (tmp_path / numerics.CACHE_FILE).exists()


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_auto_elsewhere_is_the_fixed_default_without_a_probe(device: str) -> None:
    probe = CountingProbe(FAST_GRAPHS)
    decision = decide(TrialConfig(), torch.device(device), key=lambda: "k", probe=probe)
    assert (decision.amp, decision.compile, decision.choice) == (True, False, None)
    assert probe.calls == 0


def test_auto_is_the_default_and_has_a_word(capsys: pytest.CaptureFixture[str]) -> None:
    from rsst_tune.cli import build_parser, config_from_args

    cfg = TrialConfig()
    assert (cfg.amp, cfg.compile, cfg.numerics_auto) == (None, None, True)
    assert TrialConfig.from_dict({"amp": "auto", "compile": "AUTO"}).numerics_auto
    assert TrialConfig.from_dict({"amp": "off"}).fixed_numerics() == (False, False)
    assert TrialConfig.from_dict({"compile": "on"}).fixed_numerics() == (True, True)
    with pytest.raises(ConfigError, match=r"amp must be true or false .* or auto, got 'maybe'"):
        TrialConfig.from_dict({"amp": "maybe"})
    with pytest.raises(ConfigError, match="augment must be true or false"):
        TrialConfig.from_dict({"augment": "auto"})  # auto is amp's and compile's word only
    parser = build_parser()
    for argv, expected in (
        (["--amp", "auto"], (None, None)),
        (["--amp"], (True, None)),
        (["--amp", "false", "--compile", "true"], (False, True)),
        ([], (None, None)),
    ):
        args = parser.parse_args(["run", *argv])
        cfg = config_from_args(args)
        assert (cfg.amp, cfg.compile) == expected, argv
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--help"])
    usage = " ".join(capsys.readouterr().out.split())
    assert "--amp [BOOL|auto]" in usage and "(default: auto)" in usage


def test_a_cpu_trial_under_auto_runs_as_the_fixed_default(
    make_cfg, digits_small: DataBundle, tmp_path: Path
) -> None:
    """On the CPU, auto runs fp32 eager as before, writes no cache, and shares its dense
    state 0 with a trial that asked for the fixed default (amp true)."""
    from rsst_tune.dense_cache import DenseCache
    from rsst_tune.loop import PruneLoop

    auto = make_cfg(model="vit_digits", pruning_times=1, amp=None)
    cache = DenseCache(tmp_path / "dense")
    loop = PruneLoop(auto, data=digits_small, dense_cache=cache)
    (result,) = loop.run()
    assert result.numerics == "fp32" and result.epochs_trained == 1
    assert loop.setup.decision is not None and loop.setup.decision.choice is None
    assert not (tmp_path / "dense" / numerics.CACHE_FILE).exists()
    fixed = auto.replace(amp=True)
    assert dense_key(loop.setup.numerics_cfg) == dense_key(fixed.replace(compile=False))
    (shared,) = PruneLoop(fixed, data=digits_small, dense_cache=cache).run()
    assert shared.epochs_trained == 0  # loaded: the same state 0
