"""LPIPS: the real loading path (a random AlexNet saved in torchvision's format in a temporary TORCH_HOME) against
the lpips package's own construction and forward; properties of the distance; one-line errors."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch

from toolkit.errors import ToolkitError
from toolkit.eval import weights
from toolkit.eval.perceptual import load_lpips, lpips_per_frame

lpips = pytest.importorskip("lpips")
torchvision = pytest.importorskip("torchvision")


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds a seeded random AlexNet as torchvision writes it (the whole state dict,
    classifier included), and that file's sha256."""
    home = tmp_path_factory.mktemp("torch_home")
    path = home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    path.parent.mkdir(parents=True)
    torch.manual_seed(1)
    torch.save(torchvision.models.alexnet().state_dict(), path)
    return home, path, weights.sha256_of(path)


@pytest.fixture
def net(torch_home, monkeypatch):
    home, _, sha = torch_home
    monkeypatch.delenv(weights.ENV_DIR, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(home))
    # The real entry identifies torchvision's file by the 7be5be79 prefix; this random one has its own.
    monkeypatch.setitem(weights.TABLE, "alexnet", dataclasses.replace(weights.TABLE["alexnet"], sha256_prefix=sha[:8]))
    return load_lpips("cpu")


def frames(seed: int, shape=(2, 3, 3, 64, 64)) -> torch.Tensor:
    """Smooth random frames in [0, 1] (8x8 noise upsampled), [B, T, 3, H, W]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(shape[0] * shape[1], 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(low, size=shape[3:], mode="bilinear").view(shape)


@pytest.mark.filterwarnings("ignore:.*deprecated since 0.13:UserWarning")  # lpips passes torchvision `pretrained=`
def test_batched_lpips_equals_the_package_built_from_torchvisions_alexnet(net, torch_home, monkeypatch):
    _, path, sha = torch_home
    assert net.weight_records[0]["sha256"] == sha and net.weight_records[0]["verified"]
    assert net.weight_records[1]["path"].endswith("weights/v0.1/alex.pth")

    def alexnet_from_file(pretrained: bool = False, **kwargs):  # lpips' own pretrained path, fed from the file
        model = torchvision.models.AlexNet()  # the class: `alexnet` itself is patched below
        model.load_state_dict(torch.load(path, weights_only=True))
        return model

    other = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False).eval()  # another backbone
    monkeypatch.setattr(lpips.pretrained_networks.tv, "alexnet", alexnet_from_file)
    reference = lpips.LPIPS(net="alex", version="0.1", verbose=False).eval()
    pred, target = frames(0), frames(1)
    ours = lpips_per_frame(net, pred, target, chunk=4)  # 6 frames in chunks of 4 and 2
    with torch.no_grad():
        ref = torch.tensor([[reference(pred[b, t][None], target[b, t][None], normalize=True).item()
                             for t in range(3)] for b in range(2)], dtype=torch.float64)
    assert ours.dtype == torch.float64 and ours.shape == (2, 3)
    assert ref.min() > 1e-3 and torch.allclose(ours, ref, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(lpips_per_frame(other, pred, target), ref, rtol=1e-2)


def test_lpips_is_zero_on_equal_frames_symmetric_and_grows_with_noise(net):
    x = frames(2)
    assert torch.equal(lpips_per_frame(net, x, x), torch.zeros(2, 3, dtype=torch.float64))
    y = frames(3)
    assert torch.allclose(lpips_per_frame(net, x, y), lpips_per_frame(net, y, x), rtol=1e-6, atol=1e-9)
    g = torch.Generator().manual_seed(4)
    noise = torch.randn(x.shape, generator=g)
    means = [lpips_per_frame(net, (x + s * noise).clamp(0, 1), x).mean().item() for s in (0.01, 0.05, 0.2)]
    assert 0 < means[0] < means[1] < means[2], means


def test_a_missing_backbone_names_the_file_and_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.delenv(weights.ENV_DIR, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ToolkitError) as e:
        load_lpips("cpu")
    msg, where = str(e.value), tmp_path / "hub" / "checkpoints"
    assert "\n" not in msg and msg.startswith(f"{where / 'alexnet-owt-7be5be79.pth'}: alexnet-owt-7be5be79.pth not")
    assert f"`cvae weights fetch alexnet` downloads it to {where}" in msg


def test_wrong_backbone_files_are_refused(tmp_path):
    known = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, known)
    with pytest.raises(ToolkitError, match="does not start with 7be5be79"):
        load_lpips("cpu", known)
    other = tmp_path / "vgg.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, other)
    with pytest.raises(ToolkitError, match=r"vgg.pth: not torchvision's AlexNet state dict \(found 1 of the 10"):
        load_lpips("cpu", other)


def test_without_the_eval_extra_one_line_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)  # `import lpips` now fails as if it were not installed
    with pytest.raises(ToolkitError) as e:
        load_lpips("cpu", tmp_path / "any.pth")
    assert str(e.value) == "LPIPS needs the lpips package of the 'eval' extra: pip install 'cvae-video[eval]'"


@pytest.mark.filterwarnings("ignore:.*deprecated since 0.13:UserWarning")
def test_lpips_vgg_loads_torchvisions_vgg16_features_as_the_package_builds_them(tmp_path, monkeypatch):
    """act15's LPIPS (iVideoGPT: VGG): the features of a random VGG16 written under another name (loaded
    unverified, its sha256 recorded) give the package's own LPIPS-VGG built on the same VGG16."""
    torch.manual_seed(2)
    vgg = torchvision.models.vgg16()
    path = tmp_path / "my-vgg16.pth"
    torch.save({k: v for k, v in vgg.state_dict().items() if k.startswith("features.")}, path)  # 59 MB, not 528
    net = load_lpips("cpu", path, net="vgg")
    assert net.weight_records[0]["sha256"] == weights.sha256_of(path) and not net.weight_records[0]["verified"]
    assert net.weight_records[1]["path"].endswith("weights/v0.1/vgg.pth")
    monkeypatch.setattr(lpips.pretrained_networks.tv, "vgg16", lambda pretrained=False, **kwargs: vgg)
    reference = lpips.LPIPS(net="vgg", version="0.1", verbose=False).eval()
    pred, target = frames(5, (1, 2, 3, 64, 64)), frames(6, (1, 2, 3, 64, 64))
    with torch.no_grad():
        ref = torch.tensor([[reference(pred[0, t][None], target[0, t][None], normalize=True).item()
                             for t in range(2)]], dtype=torch.float64)
    assert ref.min() > 1e-4 and torch.allclose(lpips_per_frame(net, pred, target), ref, rtol=1e-5, atol=1e-7)
    with pytest.raises(ToolkitError, match="not torchvision.s AlexNet state dict"):
        load_lpips("cpu", path, net="alex")
