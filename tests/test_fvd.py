"""FVD: the Fréchet distance against closed forms, scipy and cd-fvd; the running statistics; TF1's resize; the I3D
loaded from a file and its features against cd-fvd's own preprocessing and forward."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from toolkit.errors import ToolkitError
from toolkit.eval import weights
from toolkit.eval.fvd import FeatureStats, frechet_distance, i3d_features, load_i3d, preprocess, tf1_resize_bilinear
from toolkit.eval.frechet import frechet_from_moments

scipy_linalg = pytest.importorskip("scipy.linalg")
pytest.importorskip("cdfvd")


def gaussian_closed_form(mu_a, var_a, mu_b, var_b) -> float:
    """||mu_a - mu_b||^2 + sum(s_a + s_b - 2 sqrt(s_a s_b)) for covariances diagonal in one basis."""
    return float(np.square(mu_a - mu_b).sum() + (var_a + var_b - 2 * np.sqrt(var_a * var_b)).sum())


def test_frechet_equals_the_closed_form_of_gaussians_with_commuting_covariances():
    rng = np.random.default_rng(0)
    d = 12
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    var_a, var_b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    var_b[:3] = 0  # singular: a set with fewer items than dimensions
    expected = gaussian_closed_form(mu_a, var_a, mu_b, var_b)
    assert frechet_from_moments(mu_a, np.diag(var_a), mu_b, np.diag(var_b)) == pytest.approx(expected, rel=1e-12)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))  # the same Gaussians, rotated: covariances no longer diagonal
    rot = frechet_from_moments(q @ mu_a, q @ np.diag(var_a) @ q.T, q @ mu_b, q @ np.diag(var_b) @ q.T)
    assert rot == pytest.approx(expected, rel=1e-7)  # zero eigenvalues come out as +-1e-16: sqrt of that, 1e-8


def scipy_frechet(x: np.ndarray, y: np.ndarray, ddof: int) -> float:
    """The StyleGAN-V/cd-fvd formula: scipy.linalg.sqrtm of the (non-symmetric) product of the covariances."""
    sa, sb = np.cov(x, rowvar=False, ddof=ddof), np.cov(y, rowvar=False, ddof=ddof)
    root = scipy_linalg.sqrtm(sa @ sb).real
    return float(np.square(x.mean(0) - y.mean(0)).sum() + np.trace(sa + sb - 2 * root))


def test_frechet_of_features_equals_scipy_sqrtm_and_cd_fvds_own():
    from cdfvd.third_party.i3d.utils import frechet_distance as cdfvd_frechet

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 20)) @ rng.normal(size=(20, 20))
    y = rng.normal(size=(200, 20)) @ rng.normal(size=(20, 20)) + 0.3
    a, b = FeatureStats().add(x), FeatureStats().add(torch.from_numpy(y).float())  # float32 in: taken as float64
    y = torch.from_numpy(y).float().double().numpy()
    for ddof in (0, 1):
        assert frechet_distance(a, b, ddof=ddof) == pytest.approx(scipy_frechet(x, y, ddof), rel=1e-9)
    theirs = cdfvd_frechet(torch.from_numpy(x), torch.from_numpy(y)).item()  # TF-GAN's method, ddof 1, in torch
    assert frechet_distance(a, b) == pytest.approx(theirs, rel=1e-9) and theirs > 1


def test_frechet_of_a_set_with_itself_is_zero_and_ddof_scales_the_trace_terms():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 40))  # fewer items than dimensions: singular covariance
    a = FeatureStats().add(x)
    assert 0 <= frechet_distance(a, a) < 1e-9
    b = FeatureStats().add(rng.normal(size=(10, 40)))
    shift = float(np.square(a.sum / 10 - b.sum / 10).sum())
    d0, d1 = frechet_distance(a, b, ddof=0), frechet_distance(a, b, ddof=1)
    assert d1 - shift == pytest.approx((d0 - shift) * 10 / 9, rel=1e-9) and d0 - shift > 1
    with pytest.raises(ToolkitError, match="at least 2 items per set, got 1 and 10"):
        frechet_distance(FeatureStats().add(x[:1]), a)


def test_merged_statistics_equal_those_of_the_concatenation_and_survive_json():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(37, 16)).astype(np.float32) * 5 + 2
    whole = FeatureStats().add(x)
    parts = [FeatureStats().add(x[:5]), FeatureStats().add(x[5:6]).add(x[6:20]), FeatureStats(),
             FeatureStats().add(torch.from_numpy(x[20:]))]
    merged = FeatureStats()
    for p in parts:
        merged.merge(FeatureStats.from_list(json.loads(json.dumps(p.to_list()))))  # as gathered over ranks
    assert merged.count == whole.count == 37
    np.testing.assert_allclose(merged.sum, whole.sum, rtol=1e-13)
    np.testing.assert_allclose(merged.outer, whole.outer, rtol=1e-13)
    for m, w in zip(merged.mean_cov(), whole.mean_cov()):
        np.testing.assert_allclose(m, w, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(whole.mean_cov()[1], np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)
    back = FeatureStats.from_list(json.loads(json.dumps(whole.to_list())))
    assert back.count == 37 and np.array_equal(back.sum, whole.sum) and np.array_equal(back.outer, whole.outer)
    with pytest.raises(ValueError, match="dimension 8 added to statistics of dimension 16"):
        merged.add(x[:, :8])


def tf1_loop(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TF1 resize_bilinear(align_corners=False, half_pixel_centers=False) of one [H, W] image, pixel by pixel."""
    h, w = img.shape
    res = np.zeros((out_h, out_w))
    for i in range(out_h):
        sy = i * np.float32(h / out_h)
        y0, fy = int(np.floor(sy)), sy - np.floor(sy)
        y1 = min(y0 + 1, h - 1)
        for j in range(out_w):
            sx = j * np.float32(w / out_w)
            x0, fx = int(np.floor(sx)), sx - np.floor(sx)
            x1 = min(x0 + 1, w - 1)
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * fx
            bottom = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * fx
            res[i, j] = top + (bottom - top) * fy
    return res


def test_tf1_resize_has_no_half_pixel_shift():
    row = torch.tensor([[[[0.0, 1.0]]]])
    assert tf1_resize_bilinear(row, (1, 4)).flatten().tolist() == [0.0, 0.5, 1.0, 1.0]  # clamped at the end
    torch_row = torch.nn.functional.interpolate(row, size=(1, 4), mode="bilinear", align_corners=False)
    assert torch_row.flatten().tolist() == [0.0, 0.25, 0.75, 1.0]  # half-pixel centres
    img = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    ours = tf1_resize_bilinear(img, (11, 16))
    np.testing.assert_allclose(ours[1, 2].numpy(), tf1_loop(img[1, 2].double().numpy(), 11, 16), atol=1e-6)


def test_torch_preprocessing_is_cd_fvds_preprocess_i3d():
    from cdfvd.third_party.i3d.utils import preprocess_i3d

    g = torch.Generator().manual_seed(1)
    videos = torch.randint(0, 256, (2, 3, 3, 20, 24), generator=g).float() / 255  # 8-bit frames
    ours = preprocess(videos)
    theirs = preprocess_i3d(videos.mul(255).round().byte().permute(0, 1, 3, 4, 2).numpy())  # [B, T, H, W, C]
    assert ours.shape == (2, 3, 3, 224, 224) and torch.allclose(ours, theirs, atol=1e-6)
    assert (preprocess(videos, "tf1") - ours).abs().mean() > 0.01


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory):
    """A seeded random InceptionI3d(400) saved as a state dict under a name of its own (not TATS's file), its
    BatchNorms holding the statistics of one batch so that its logits vary (a fresh one's are ~constant)."""
    from cdfvd.third_party.i3d.pytorch_i3d import InceptionI3d

    torch.manual_seed(0)
    net = InceptionI3d(400, in_channels=3)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.momentum = None  # cumulative average: after one batch, exactly its statistics
    with torch.no_grad():
        net.train().extract_pre_pool_features(torch.rand(2, 3, 9, 64, 64) * 2 - 1)
    path = tmp_path_factory.mktemp("i3d") / "random_i3d.pt"
    torch.save(net.state_dict(), path)
    return path


def test_i3d_features_are_cd_fvds_logits_of_its_preprocessing(i3d_file):
    from cdfvd.third_party.i3d.utils import preprocess_i3d

    net = load_i3d(i3d_file, "cpu")
    record = net.weight_records[0]
    assert record["verified"] is False and record["sha256"] == weights.sha256_of(i3d_file)
    g = torch.Generator().manual_seed(2)
    videos = torch.randint(0, 256, (2, 9, 3, 16, 16), generator=g).float() / 255
    ours = i3d_features(net, videos, chunk=1)
    with torch.no_grad():
        theirs = net(preprocess_i3d(videos.mul(255).round().byte().permute(0, 1, 3, 4, 2).numpy())).double()
    assert ours.dtype == torch.float64 and ours.shape == (2, 400)
    scale = theirs.abs().max()  # float32 through 60 layers, in batches of 1 and 2: equal to 1e-5 of the scale
    assert (ours[0] - ours[1]).abs().max() > 1e-2 * scale and (ours - theirs).abs().max() < 1e-5 * scale
    with pytest.raises(ToolkitError, match="at least 9 frames"):
        i3d_features(net, videos[:, :8])
    eps = {m.eps for m in load_i3d(i3d_file, "cpu", bn_eps=1e-3).modules() if isinstance(m, torch.nn.BatchNorm3d)}
    assert eps == {1e-3} and {m.eps for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d)} == {1e-5}


def test_i3d_weight_files_are_checked(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.ENV_DIR, str(tmp_path))
    with pytest.raises(ToolkitError) as e:
        load_i3d(None, "cpu")
    assert str(e.value).startswith(f"{tmp_path / 'i3d_pretrained_400.pt'}: i3d_pretrained_400.pt not found")
    assert "`cvae weights fetch i3d`" in str(e.value)
    (tmp_path / "i3d_pretrained_400.pt").write_bytes(b"a damaged download")
    with pytest.raises(ToolkitError, match="git blob id .* is not that of i3d_pretrained_400.pt"):
        load_i3d(None, "cpu")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ToolkitError, match="other.pt: not an I3D Kinetics-400 state dict"):
        load_i3d(tmp_path / "other.pt", "cpu")


def test_without_the_eval_extra_one_line_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cdfvd", None)
    monkeypatch.setitem(sys.modules, "cdfvd.third_party.i3d", None)
    with pytest.raises(ToolkitError) as e:
        load_i3d(tmp_path / "any.pt", "cpu")
    assert str(e.value) == "FVD needs the cd-fvd package of the 'eval' extra: pip install 'cvae-video[eval]'"
