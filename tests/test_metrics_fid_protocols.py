"""FID preprocessing protocols (`fid.protocol`): torchmetrics' (default), pytorch-fid's and clean-fid's.
Each protocol's resize and scaling is checked against the library's own code on real dash-cam frames;
the network path after the scaling is checked against torch-fidelity's forward."""

import numpy as np
import pytest
import torch
from PIL import Image

from metrics.fid import FID_PROTOCOLS, FIDMetric, InceptionFeatures, make_random_inception_weights, preprocess


@pytest.fixture(scope="module")
def inception_path(tmp_path_factory):
    return make_random_inception_weights(tmp_path_factory.mktemp("inception") / "inception.pth")


@pytest.fixture(scope="module")
def dashcam_frames(shared_data):
    """The six real dash-cam images at 256x410 (the frame size FID sees), uint8 [6,256,410,3]."""
    files = sorted((shared_data / "dashcam" / "images").glob("*.jpg"))
    return np.stack([np.asarray(Image.open(f).convert("RGB").resize((410, 256), Image.BICUBIC)) for f in files])


def test_clean_fid_preprocessing_equals_clean_fid(dashcam_frames):
    resize = pytest.importorskip("cleanfid.resize", reason="clean-fid is a test dependency (pip install -e .[test])")
    clean = resize.build_resizer("clean")
    theirs = np.stack([clean(f).transpose(2, 0, 1) for f in dashcam_frames[:2]])
    theirs = (torch.from_numpy(theirs) - 128) / 128  # clean-fid's InceptionV3W, resize_inside=False
    torch.testing.assert_close(preprocess(dashcam_frames[:2], "clean_fid"), theirs, rtol=0, atol=0)


def test_pytorch_fid_preprocessing_equals_pytorch_fid(dashcam_frames):
    inception = pytest.importorskip("pytorch_fid.inception", reason="pytorch-fid is a test dependency")
    from torchvision.transforms.functional import to_tensor

    # pytorch-fid's InceptionV3 without its network (building it downloads weights): its forward
    # resizes and scales, then runs the blocks; an identity block returns the network input
    net = inception.InceptionV3.__new__(inception.InceptionV3)
    torch.nn.Module.__init__(net)
    net.resize_input, net.normalize_input = True, True
    net.output_blocks, net.last_needed_block = [0], 0
    net.blocks = torch.nn.ModuleList([torch.nn.Identity()])
    x = torch.stack([to_tensor(f) for f in dashcam_frames[:2]])  # pytorch-fid's dataset: ToTensor
    theirs = net(x)[0]
    torch.testing.assert_close(preprocess(dashcam_frames[:2], "pytorch_fid"), theirs, rtol=0, atol=0)


def test_pool3_path_equals_torch_fidelity_forward(inception_path, dashcam_frames):
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    ext = InceptionFeatures(inception_path)
    x = torch.from_numpy(dashcam_frames[:2]).permute(0, 3, 1, 2)
    ref = ext.net(x)
    scaled = (interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(299, 299), align_corners=False) - 128) / 128
    torch.testing.assert_close(ext.pool3(scaled), ref, rtol=1e-5, atol=1e-5)


def test_protocols_give_different_finite_fid_named_in_the_result(inception_path, dashcam_frames):
    """Real frames vs the same frames shifted and darkened: three finite FIDs, and the two
    non-default protocols differ from torchmetrics' (they resize and scale differently)."""
    real = dashcam_frames
    gen = np.clip(np.roll(real, 12, axis=2).astype(int) - 25, 0, 255).astype(np.uint8)
    values = {}
    for protocol in FID_PROTOCOLS:
        metric = FIDMetric(InceptionFeatures(inception_path, protocol=protocol), frame_size=None)
        metric.update(real, real=True)
        metric.update(gen, real=False)
        values[protocol] = metric.compute().value
    assert all(np.isfinite(v) and v > 0 for v in values.values())
    for other in ("pytorch_fid", "clean_fid"):
        assert abs(values[other] / values["torchmetrics"] - 1) > 1e-4, values


def test_unknown_protocol_is_refused(inception_path):
    with pytest.raises(ValueError, match="fid.protocol='tf'"):
        InceptionFeatures(inception_path, protocol="tf")
