"""Tests for the model registry and the built-in models (real models, no mocks)."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from rsst_tune.errors import ConfigError
from rsst_tune.models import (
    canonical_name,
    create_model,
    is_registered,
    list_models,
    register_model,
    unregister_model,
)
from rsst_tune.models.cifar_resnet import BasicBlock, CifarResNet, PadShortcut
from rsst_tune.models.vgg import CifarVGG

BUILTIN = [
    "resnet20",
    "resnet32",
    "resnet50",
    "resnet56",
    "vgg16_bn",
    "vit_base",
    "vit_digits",
    "vit_small",
    "vit_tiny",
]

# (model, in_chans, img_size): each built-in model at the shape of the data it is meant for.
SHAPES = [
    ("vit_tiny", 3, 32),
    ("vit_small", 3, 32),
    ("vit_base", 3, 32),
    ("vit_digits", 1, 8),
    ("resnet20", 3, 32),
    ("resnet32", 3, 32),
    ("resnet56", 3, 32),
    ("vgg16_bn", 3, 32),
    ("vgg16_bn", 1, 8),
    ("resnet20", 1, 8),
    ("vit_tiny", 1, 8),
]


def n_params(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def test_builtin_models_are_registered() -> None:
    """Every built-in model (and alias) is listed and resolvable."""
    assert set(BUILTIN) <= set(list_models())
    assert list_models() == sorted(list_models())
    for name in BUILTIN:
        assert is_registered(name)
    for alias, name in [("res20s", "resnet20"), ("res32s", "resnet32"), ("res56s", "resnet56")]:
        assert is_registered(alias)
        assert canonical_name(alias) == name
        assert alias not in list_models()


def test_unknown_model_lists_choices() -> None:
    """An unknown name is a one-line ConfigError naming the valid choices."""
    with pytest.raises(ConfigError) as info:
        create_model("resnet21", num_classes=10, in_chans=3, img_size=32)
    message = str(info.value)
    assert "resnet21" in message and "\n" not in message
    for name in BUILTIN:
        assert name in message
    assert "timm:" in message
    assert not is_registered("resnet21")


def test_unknown_timm_model_is_config_error() -> None:
    """A ``timm:`` name timm does not know is a ConfigError with suggestions."""
    with pytest.raises(ConfigError, match="unknown timm model 'deit_tinyy_patch16_224'"):
        create_model("timm:deit_tinyy_patch16_224", num_classes=10, in_chans=3, img_size=32)
    assert not is_registered("timm:deit_tinyy_patch16_224")


@pytest.mark.parametrize("value", [0, -1])
def test_bad_shape_is_config_error(value: int) -> None:
    """Non-positive class/channel/size counts are rejected."""
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("resnet20", num_classes=value, in_chans=3, img_size=32)


def test_builtin_has_no_pretrained_weights() -> None:
    """Pretrained weights are only for timm: names."""
    with pytest.raises(ConfigError, match="timm:"):
        create_model("vit_tiny", num_classes=10, in_chans=3, img_size=32, pretrained=True)


def test_vit_patch_must_divide_image() -> None:
    """A ViT whose patch does not tile the image is a ConfigError."""
    with pytest.raises(ConfigError, match="divisible"):
        create_model("vit_tiny", num_classes=10, in_chans=3, img_size=30)


@pytest.mark.parametrize(
    ("name", "in_chans", "img_size", "expected"),
    [
        ("vit_tiny", 3, 32, 2_697_610),
        ("vit_digits", 1, 8, 136_138),
        ("resnet20", 3, 32, 269_722),
    ],
)
def test_param_counts(name: str, in_chans: int, img_size: int, expected: int) -> None:
    """The reference architectures have exactly their published parameter counts."""
    model = create_model(name, num_classes=10, in_chans=in_chans, img_size=img_size)
    assert n_params(model) == expected


def test_vit_tiny_architecture() -> None:
    """vit_tiny is timm's VisionTransformer with the documented shape and no dropout."""
    model = create_model("vit_tiny", num_classes=10, in_chans=3, img_size=32)
    assert isinstance(model, VisionTransformer)
    assert len(model.blocks) == 9
    assert model.embed_dim == 192
    assert model.patch_embed.patch_size == (4, 4)
    block = model.blocks[0]
    assert isinstance(block, Block)
    assert block.attn.num_heads == 3
    assert isinstance(block.mlp.fc1, nn.Linear) and block.mlp.fc1.out_features == 384
    assert not [m for m in model.modules() if isinstance(m, nn.Dropout) and m.p > 0]


def test_vit_digits_follows_dataset_shape() -> None:
    """img_size/in_chans come from the dataset; the patch size stays."""
    model = create_model("vit_digits", num_classes=10, in_chans=3, img_size=16)
    assert isinstance(model, VisionTransformer)
    assert model.patch_embed.patch_size == (2, 2)
    assert model.patch_embed.num_patches == 64
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_resnet_option_a_shortcut() -> None:
    """CIFAR ResNets: stem conv1, 16/32/64 channels, parameter-free shortcuts, 1x1 convs absent."""
    model = create_model("res56s", num_classes=10, in_chans=3, img_size=32)
    assert isinstance(model, CifarResNet)
    assert isinstance(model.conv1, nn.Conv2d) and model.conv1.out_channels == 16
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 2 * 27
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert {c.out_channels for c in convs} == {16, 32, 64}
    for block in [model.layer2[0], model.layer3[0]]:
        assert isinstance(block, BasicBlock) and isinstance(block.shortcut, PadShortcut)
        assert n_params(block.shortcut) == 0


def test_vgg_runs_on_tiny_images() -> None:
    """vgg16_bn skips pools that would go below 1x1, keeping the same module layout."""
    small = create_model("vgg16_bn", num_classes=10, in_chans=1, img_size=8)
    big = create_model("vgg16_bn", num_classes=10, in_chans=1, img_size=32)
    assert isinstance(small, CifarVGG) and isinstance(big, CifarVGG)
    assert len(small.features) == len(big.features)
    pools = [m for m in small.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3
    assert sum(isinstance(m, nn.Conv2d) for m in small.features) == 13
    assert small.classifier.in_features == 512


@pytest.mark.parametrize(("name", "in_chans", "img_size"), SHAPES)
def test_forward_shapes(name: str, in_chans: int, img_size: int) -> None:
    """Each model maps [N, C, H, W] to [N, num_classes]; at 8x8, backprop reaches the stem."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_chans=in_chans, img_size=img_size)
    model.train()
    out = model(torch.randn(2, in_chans, img_size, img_size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    if img_size == 8:
        out.sum().backward()
        first = next(p for p in model.parameters() if p.dim() == 4)
        assert first.grad is not None and first.grad.abs().sum() > 0


def test_timm_model_builds_offline() -> None:
    """``timm:NAME`` builds any timm model at the dataset's shape, without weights: no
    download is involved (pretrained=False), so any error, a ConfigError included, fails.
    (timm itself is a dependency, imported at the top of this module.)"""
    model = create_model("timm:deit_tiny_patch16_224", num_classes=10, in_chans=3, img_size=32)
    assert isinstance(model, VisionTransformer)  # timm's DeiT-tiny, built at the asked shape
    assert model.patch_embed.img_size == (32, 32) and model.embed_dim == 192
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert is_registered("timm:deit_tiny_patch16_224")


def test_timm_model_without_img_size() -> None:
    """timm models that take no img_size (CNNs) are built without it."""
    model = create_model("timm:resnet10t", num_classes=5, in_chans=1, img_size=32)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)


def test_user_registered_model() -> None:
    """A model registered with @register_model is creatable by name and alias."""

    @register_model("test_user_mlp", "test_user_mlp_alias")
    def test_user_mlp(
        *, num_classes: int, in_chans: int, img_size: int, pretrained: bool = False
    ) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * img_size * img_size, num_classes))

    try:
        assert "test_user_mlp" in list_models()
        for name in ["test_user_mlp", "test_user_mlp_alias"]:
            model = create_model(name, num_classes=4, in_chans=2, img_size=5)
            assert model(torch.randn(3, 2, 5, 5)).shape == (3, 4)

        def other(
            *, num_classes: int, in_chans: int, img_size: int, pretrained: bool = False
        ) -> nn.Module:
            return nn.Identity()

        with pytest.raises(ConfigError, match="already registered"):
            register_model("test_user_mlp")(other)
        with pytest.raises(ConfigError, match="already registered"):
            register_model("fresh_name", "res20s")(other)
        assert not is_registered("fresh_name")
    finally:
        unregister_model("test_user_mlp")
    assert not is_registered("test_user_mlp") and not is_registered("test_user_mlp_alias")


# ----------------------------------------------------------------------------- pretrained_file
# timm's tiny `test_vit` (patch 16, width 64, depth 6, 2 heads), built with explicit kwargs:
# no download, no hub (HF_HUB_OFFLINE=1 in these tests).
TINY_VIT = dict(num_classes=10, in_chans=1, img_size=32)
VIT_TRIAL = dict(
    model="timm:test_vit", dataset="digits", img_size=32, device="cpu", amp=False, epochs=1
)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _tiny_vit(seed: int = 1, **kwargs: object) -> nn.Module:
    import timm

    torch.manual_seed(seed)
    return timm.create_model("test_vit", pretrained=False, **{**TINY_VIT, **kwargs})


def _setup(tmp_path, digits_small, **kwargs: object):  # type: ignore[no-untyped-def]
    from rsst_tune.config import TrialConfig
    from rsst_tune.trial_setup import build_setup

    return build_setup(TrialConfig(**{**VIT_TRIAL, **kwargs}), digits_small)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors"])
def test_pretrained_file_loads_a_tiny_timm_vit(
    tmp_path, digits_small, offline, suffix: str
) -> None:
    """Weights saved from a tiny timm ViT start the trial's model, bit for bit."""
    src = _tiny_vit()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(src.state_dict(), str(path))
    else:
        torch.save(src.state_dict(), path)
    model = _setup(tmp_path, digits_small, pretrained_file=str(path)).model
    got = model.state_dict()
    assert set(got) == set(src.state_dict())
    for key, value in src.state_dict().items():
        assert torch.equal(got[key], value), key
    fresh = _setup(tmp_path, digits_small).model.state_dict()
    assert not torch.equal(fresh["blocks.0.attn.qkv.weight"], got["blocks.0.attn.qkv.weight"])


def test_pretrained_file_adapts_head_size_and_channels(tmp_path, digits_small, offline) -> None:
    """An ImageNet-shaped file (1000 classes, RGB, 48 px; wrapped as a training checkpoint
    with DDP prefixes) fits: new head, the stem summed to one channel, pos_embed resampled."""
    src = _tiny_vit(num_classes=1000, in_chans=3, img_size=48)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "imagenet.pth")
    model = _setup(tmp_path, digits_small, pretrained_file=str(tmp_path / "imagenet.pth")).model
    got, want = model.state_dict(), src.state_dict()
    assert got["head.weight"].shape == (10, 64)  # kept at its fresh init
    assert got["pos_embed"].shape == (1, 1 + 2 * 2, 64) != want["pos_embed"].shape
    assert torch.equal(got["cls_token"], want["cls_token"])
    stem = want["patch_embed.proj.weight"].sum(dim=1, keepdim=True)
    assert torch.allclose(got["patch_embed.proj.weight"], stem)
    for key in ("blocks.5.mlp.fc2.weight", "norm.bias", "blocks.0.attn.qkv.bias"):
        assert torch.equal(got[key], want[key]), key


def test_pretrained_file_errors_are_one_line(tmp_path, digits_small, offline) -> None:
    def error(path: object) -> str:
        with pytest.raises(ConfigError) as err:
            _setup(tmp_path, digits_small, pretrained_file=str(path))
        text = str(err.value)
        assert "\n" not in text and "pretrained_file" in text
        return text

    assert "not found" in error(tmp_path / "missing.pt")
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    assert "is not a torch (weights_only=True) state dict" in error(tmp_path / "notes.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    assert "is not a safetensors state dict" in error(tmp_path / "bad.safetensors")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    assert "holds no state dict" in error(tmp_path / "list.pt")
    torch.save({"a.weight": torch.zeros(2), "step": 3}, tmp_path / "mixed.pt")
    assert "not tensors, e.g. step" in error(tmp_path / "mixed.pt")
    torch.save(_tiny_vit(depth=2).state_dict(), tmp_path / "shallow.pt")
    text = error(tmp_path / "shallow.pt")
    assert "does not fit timm:test_vit: missing 48" in text and "blocks.2." in text
    torch.save(_tiny_vit(embed_dim=32).state_dict(), tmp_path / "narrow.pt")
    assert "shape" in error(tmp_path / "narrow.pt") and "[1, 1, 32] vs [1, 1, 64]" in error(
        tmp_path / "narrow.pt"
    )
    torch.save({**_tiny_vit().state_dict(), "extra.weight": torch.zeros(1)}, tmp_path / "x.pt")
    assert "unexpected 1 (e.g. extra.weight)" in error(tmp_path / "x.pt")


def test_pretrained_file_through_the_run_flag(tmp_path, offline, capsys) -> None:
    """`rsst-tune run --pretrained_file w.pt`: state 0 starts from the file's weights (θ0)."""
    from rsst_tune.checkpoint import load_theta0
    from rsst_tune.cli import main

    src = _tiny_vit()
    torch.save(src.state_dict(), tmp_path / "w.pt")
    out = tmp_path / "run"
    argv = ["run", "--model", "timm:test_vit", "--dataset", "digits", "--img-size", "32"]
    argv += ["--pretrained_file", str(tmp_path / "w.pt"), "--pruning_times", "1"]
    argv += ["--epochs", "1", "--device", "cpu", "--val_size", "100", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    theta0 = load_theta0(out)
    for key, value in src.state_dict().items():
        assert torch.equal(theta0[key], value), key
    saved = (out / "config.json").read_text()
    assert '"pretrained_file": "' in saved and '"img_size": 32' in saved


def test_resnet50_is_torchvisions_with_the_datasets_shape(digits_small) -> None:
    """``resnet50``: torchvision's Bottleneck ResNet-50, classes from the dataset, a 1-channel
    stem for grey data, weights only from a file; a trial sets it up on digits at 32."""
    from torchvision.models.resnet import Bottleneck, ResNet

    from rsst_tune.config import TrialConfig
    from rsst_tune.trial_setup import build_setup

    torch.manual_seed(0)
    model = create_model("resnet50", num_classes=10, in_chans=3, img_size=32)
    assert isinstance(model, ResNet) and isinstance(model.layer1[0], Bottleneck)
    assert sum(p.numel() for p in model.parameters()) == 23_528_522
    with pytest.raises(ConfigError, match="pretrained_file") as info:
        create_model("resnet50", num_classes=10, in_chans=3, img_size=32, pretrained=True)
    assert "\n" not in str(info.value)
    cfg = TrialConfig(
        model="resnet50", dataset="digits", img_size=32, device="cpu", amp=False,
        method="refill", filter_ratio=0.5, epochs=1, batch_size=8,
    )  # fmt: skip
    setup = build_setup(cfg, digits_small)
    assert setup.model.conv1.in_channels == 1 and setup.model.fc.out_features == 10
    removable = [g.name for g in setup.structure.groups if g.removable]
    assert len(removable) == 32 and all(n.endswith(("conv1", "conv2")) for n in removable)
    x, _ = next(setup.val_data.eval_batches(2))
    assert x.shape == (2, 1, 32, 32) and setup.model.eval()(x).shape == (2, 10)
