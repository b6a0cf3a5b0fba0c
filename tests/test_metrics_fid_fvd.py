"""FID and FVD on randomly initialised networks of the real classes, saved and reloaded by path.

Inception runs at 299x299 on CPU (~0.1-0.3 s a frame): the FID tests use a handful of frames.
"""

import warnings

import numpy as np
import pytest
import torch

from data.synthetic import synthetic_clip
from metrics.fid import FIDMetric, InceptionFeatures, make_random_inception_weights
from metrics.frames import resize_frames
from metrics.frechet import FrechetBiasWarning
from metrics.fvd import FVDMetric, I3DFeatures, make_tiny_i3d, to_i3d_input


@pytest.fixture(scope="module")
def inception_path(tmp_path_factory):
    return make_random_inception_weights(tmp_path_factory.mktemp("inception") / "inception.pth")


@pytest.fixture(scope="module")
def i3d_path(tmp_path_factory):
    return make_tiny_i3d(tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt")


def _frames(seed, n=4, h=64, w=96):
    return synthetic_clip(seed, n, h, w).frames


# ---------------------------------------------------------------- FID


def test_fid_equals_torchmetrics_on_same_frames_and_weights(inception_path):
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, gen = _frames(0, n=3), _frames(1, n=3)
    ours = FIDMetric(InceptionFeatures(inception_path, batch_size=2), frame_size=(256, 410))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FrechetBiasWarning)
        ours.update(real, real=True)
        ours.update(gen, real=False)
        r = ours.compute()

    tm = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(inception_path), antialias=False)
    for frames, is_real in ((real, True), (gen, False)):
        tm.update(torch.from_numpy(resize_frames(frames, (256, 410))).permute(0, 3, 1, 2), real=is_real)
    theirs = tm.compute().item()
    # the same features: torchmetrics keeps their sums
    for is_real, tm_sum in ((True, tm.real_features_sum), (False, tm.fake_features_sum)):
        np.testing.assert_allclose(
            np.concatenate(ours.features[is_real]).astype(np.float64).sum(0), tm_sum.numpy(), rtol=1e-6, atol=1e-6
        )
    assert np.concatenate(ours.features[True]).std() > 0
    assert (r.n_real, r.n_gen, r.dim) == (3, 3, 2048)
    assert r.value > 1.0
    # same features, same statistics: the only difference is torchmetrics' eigvals(S1 S2), whose
    # near-zero eigenvalues add a small error when N < d (3 frames, 2048 dims); tests in
    # test_metrics_frechet.py show ours equals the exact value there and torchmetrics at N > d
    assert r.value == pytest.approx(theirs, rel=1e-4)


def test_fid_zero_for_identical_sets(inception_path):
    frames = _frames(3, n=2)
    m = FIDMetric(InceptionFeatures(inception_path), frame_size=(256, 410))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FrechetBiasWarning)
        m.update(frames, real=True)
        m.update(frames, real=False)
        assert m.compute().value == pytest.approx(0.0, abs=1e-6)


def test_fid_weights_errors(tmp_path, i3d_path):
    with pytest.raises(FileNotFoundError, match="fid.weights"):
        InceptionFeatures(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="torch-fidelity InceptionV3"):
        InceptionFeatures(i3d_path)  # a TorchScript file is not an Inception state dict


def test_random_inception_file_has_the_real_keys(inception_path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    state = torch.load(inception_path, weights_only=True)
    assert len(state) == 566 and state["fc.weight"].shape == (1008, 2048)
    # torch-fidelity's own class loads it (strict), as it would the real file
    FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(inception_path))


# ---------------------------------------------------------------- FVD


def test_tiny_i3d_loads_through_the_real_loader(i3d_path):
    ext = I3DFeatures(i3d_path)
    assert ext.format == "torchscript"
    out = ext(torch.zeros(2, 3, 5, 224, 224))
    assert out.shape == (2, 400) and out.dtype == np.float32


@pytest.mark.parametrize("crop", ["center", "squash"])
def test_fvd_features_of_known_input(i3d_path, crop):
    """Features 0-2 of the tiny I3D are the channel means of what it receives, 3-5 the motion: a
    constant RGB video must arrive as colour/127.5 - 1 per channel, in RGB order, without motion."""
    colour = np.array([200, 50, 10], np.uint8)
    video = np.broadcast_to(colour, (6, 64, 96, 3)).copy()
    m = FVDMetric(I3DFeatures(i3d_path), frame_size=(256, 410), crop=crop)
    x = to_i3d_input(resize_frames(video, (256, 410)), crop=crop)
    assert x.shape == (3, 6, 224, 224)
    feats = m.extractor(x[None])[0]
    np.testing.assert_allclose(feats[:3], colour / 127.5 - 1.0, atol=1e-5)
    np.testing.assert_allclose(feats[3:6], 0.0, atol=1e-6)
    moving = video.copy()
    moving[1::2] = 255 - moving[1::2]
    assert (m.extractor(to_i3d_input(resize_frames(moving, (256, 410)), crop=crop)[None])[0][3:6] > 0.1).all()


def test_center_crop_drops_the_sides_squash_keeps_them():
    frames = np.zeros((2, 256, 410, 3), np.uint8)
    frames[:, :, :40] = 255  # a white band on the far left only
    centre = to_i3d_input(frames, crop="center")
    squash = to_i3d_input(frames, crop="squash")
    assert centre.shape == squash.shape == (3, 2, 224, 224)
    assert centre.max() == -1.0  # the band lies outside the centre crop
    assert squash.max() == pytest.approx(1.0)
    assert centre.min() >= -1.0 and centre.max() <= 1.0


def test_fvd_batching_does_not_change_features(i3d_path):
    videos = [_frames(s, n=5) for s in range(3)]
    feats = []
    for batch_size in (1, 2):
        m = FVDMetric(I3DFeatures(i3d_path), frame_size=(256, 410), batch_size=batch_size)
        for v in videos:
            m.update(v, real=True)
            m.update(v, real=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FrechetBiasWarning)
            assert m.compute().value == pytest.approx(0.0, abs=1e-6)
        feats.append(np.concatenate(m.features[True]))
    np.testing.assert_allclose(feats[0], feats[1], rtol=1e-5, atol=1e-6)


def test_fvd_distinguishes_sets_and_reports_n(i3d_path):
    m = FVDMetric(I3DFeatures(i3d_path), frame_size=(256, 410), batch_size=4)
    for s in range(3):
        m.update(_frames(s, n=4), real=True)
        m.update(np.ascontiguousarray(255 - _frames(s + 10, n=4)), real=False)
    with pytest.warns(FrechetBiasWarning):
        r = m.compute()
    assert r.value > 0 and (r.n_real, r.n_gen, r.dim) == (3, 3, 400)
    assert "centre crop" in m.protocol


def test_fvd_num_frames_too_long(i3d_path):
    m = FVDMetric(I3DFeatures(i3d_path), num_frames=10)
    with pytest.raises(ValueError, match="fvd.num_frames=10"):
        m.update(_frames(0, n=4), real=True)


def test_cdfvd_state_dict_loader(tmp_path):
    pytest.importorskip("cdfvd", reason="cd-fvd is not installed")
    from cdfvd.third_party.i3d.pytorch_i3d import InceptionI3d

    torch.manual_seed(0)
    path = tmp_path / "i3d_pretrained_400.pt"
    torch.save(InceptionI3d(400, in_channels=3).state_dict(), path)
    ext = I3DFeatures(path)  # auto: TorchScript fails, the state dict loads
    assert ext.format == "cdfvd"
    out = ext(torch.rand(1, 3, 9, 224, 224) * 2 - 1)  # the real net needs T >= 9 at 224x224
    assert out.shape == (1, 400) and np.isfinite(out).all()


def test_wrong_i3d_files_give_clear_errors(tmp_path, inception_path, i3d_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a model")
    with pytest.raises(ValueError, match="not an I3D this code can load.*i3d_torchscript.pt"):
        I3DFeatures(text)
    with pytest.raises(ValueError, match="as torchscript.*as cdfvd"):
        I3DFeatures(inception_path)  # a state dict of another network
    with pytest.raises(ValueError, match="as cdfvd"):
        I3DFeatures(i3d_path, fmt="cdfvd")
    with pytest.raises(FileNotFoundError, match="fvd.weights"):
        I3DFeatures(tmp_path / "absent.pt")
    with pytest.raises(ValueError, match="fvd.format"):
        I3DFeatures(i3d_path, fmt="onnx")


def test_scripted_module_with_another_signature_is_reported(tmp_path):
    class Plain(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=[2, 3, 4])

    path = tmp_path / "plain.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(Plain()), str(path))
    ext = I3DFeatures(path)
    with pytest.raises(RuntimeError, match="plain.pt"):
        ext(torch.zeros(1, 3, 2, 224, 224))


def test_wrong_feature_dim_is_reported(i3d_path):
    ext = I3DFeatures(i3d_path, feature_dim=512)
    with pytest.raises(ValueError, match="fvd.feature_dim"):
        ext(torch.zeros(1, 3, 2, 224, 224))
