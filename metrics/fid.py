"""FID: the TF Inception 2015-12-05 pool3 features (2048-d) through torchmetrics / torch-fidelity.

Frames are first resized to 256x410 (paper, Ctrl-V; `frame_size` in config). Then one of three
preprocessing protocols (`fid.protocol`) brings them to the network's 299x299 input; the network
and its weights are the same for all three (the libraries give identical features on identical
299x299 input), so only the resize and the scaling differ:
- `torchmetrics` (default): uint8 frames to torchmetrics' `NoTrainInceptionV3`, which resizes
  itself. antialias=False selects torch-fidelity's TF1-style bilinear resize, the one the standard
  FID numbers use; torchmetrics' own default (antialias=True) does not reproduce them. (x-128)/128.
- `pytorch_fid`: pytorch-fid's path: frames / 255, torch bilinear resize (align_corners=False),
  then 2x - 1.
- `clean_fid`: clean-fid's "clean" mode: each channel resized in float by PIL's bicubic filter,
  clipped to 0..255, then (x-128)/128.
The distance is metrics.frechet (float64, symmetric form), not torchmetrics' eigvals(S1 S2).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from data.atomic import atomic_path
from data.cli import InputError, MissingFile
from metrics.frames import resize_frames
from metrics.frechet import FrechetResult, frechet_distance

INCEPTION_FEATURE_NAME = "inception-v3-compat"  # torch-fidelity's name for the TF-ported network
FID_PROTOCOLS = {
    "torchmetrics": "torchmetrics / torch-fidelity preprocessing (TF1 bilinear resize to 299, (x-128)/128)",
    "pytorch_fid": "pytorch-fid preprocessing (x/255, torch bilinear resize to 299, 2x-1)",
    "clean_fid": "clean-fid preprocessing (PIL bicubic float resize to 299, (x-128)/128)",
}
# torch-fidelity's pool3 path after its input scaling (FeatureExtractorInceptionV3.forward), run
# here for the protocols that scale the input themselves: the library has no entry point that takes
# an already resized and scaled float input.
_POOL3_LAYERS = (
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "MaxPool_1",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
    "MaxPool_2",
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "Mixed_6a",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
    "Mixed_6e",
    "Mixed_7a",
    "Mixed_7b",
    "Mixed_7c",
    "AvgPool",
)


class InceptionFeatures:
    """uint8 frames [N,H,W,3] -> float32 features [N, feature_dim], batched, on `device`."""

    def __init__(
        self,
        weights: str | Path,
        device: str = "cpu",
        batch_size: int = 32,
        feature_dim: int = 2048,
        antialias: bool = False,
        protocol: str = "torchmetrics",
    ):
        from torchmetrics.image.fid import NoTrainInceptionV3

        if protocol not in FID_PROTOCOLS:
            raise ValueError(f"fid.protocol={protocol!r}: valid are {sorted(FID_PROTOCOLS)}")
        if protocol != "torchmetrics" and int(feature_dim) != 2048:
            raise ValueError(f"fid.protocol={protocol!r} gives the 2048-d pool3 features only (fid.feature_dim=2048)")
        self.protocol = protocol
        path = Path(str(weights)).expanduser()
        if not path.is_file():
            raise MissingFile(f"fid.weights={str(weights)!r}: no such file (see docs/metrics.md)")
        try:
            with warnings.catch_warnings():
                # a wrong file that is TorchScript makes torch.load warn before it fails: the error says it all
                warnings.filterwarnings("ignore", message=".*TorchScript archive.*")
                warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*")
                self.net = NoTrainInceptionV3(
                    name=INCEPTION_FEATURE_NAME,
                    features_list=[str(feature_dim)],
                    feature_extractor_weights_path=str(path),
                    antialias=antialias,
                )
        except Exception as e:  # torch.load / load_state_dict errors, whatever their type
            raise InputError(
                f"fid.weights={str(path)!r} is not a torch-fidelity InceptionV3 state dict "
                f"(weights-inception-2015-12-05-6726825d.pth): {type(e).__name__}: "
                f"{str(e)[:300]}"
            ) from e
        self.net = self.net.to(device)
        self.device, self.batch_size, self.feature_dim = device, int(batch_size), int(feature_dim)
        self.weights = str(path)

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        feats = []
        for start in range(0, len(frames), self.batch_size):
            batch = np.ascontiguousarray(frames[start : start + self.batch_size])
            if self.protocol == "torchmetrics":
                x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device)  # uint8 [B,3,H,W]
                feats.append(self.net(x).float().cpu().numpy())
            else:
                feats.append(self.pool3(preprocess(batch, self.protocol).to(self.device)).float().cpu().numpy())
        return np.concatenate(feats) if feats else np.zeros((0, self.feature_dim), np.float32)

    def pool3(self, x: torch.Tensor) -> torch.Tensor:
        """Pool3 features [B, 2048] of input already resized to 299x299 and scaled to about [-1, 1]."""
        for name in _POOL3_LAYERS:
            x = getattr(self.net, name)(x)
        return torch.flatten(x, 1)


def preprocess(frames: np.ndarray, protocol: str) -> torch.Tensor:
    """uint8 frames [B,H,W,3] -> the network input [B,3,299,299] of `pytorch_fid` or `clean_fid`."""
    if protocol == "pytorch_fid":
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0  # torchvision's ToTensor
        x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return 2 * x - 1
    if protocol == "clean_fid":
        from PIL import Image

        def channel(c: np.ndarray) -> np.ndarray:
            img = Image.fromarray(c.astype(np.float32), mode="F").resize((299, 299), resample=Image.BICUBIC)
            return np.asarray(img).clip(0, 255)

        x = np.stack([np.stack([channel(f[..., k]) for k in range(3)]) for f in frames]).astype(np.float32)
        return (torch.from_numpy(x) - 128) / 128
    raise ValueError(f"fid.protocol={protocol!r}: valid are {sorted(FID_PROTOCOLS)}")


class FIDMetric:
    """Accumulates Inception features of real and generated frames; `compute()` gives the FID."""

    def __init__(self, extractor: InceptionFeatures, frame_size=(256, 410), resize_method: str = "bicubic"):
        self.extractor, self.frame_size, self.resize_method = extractor, frame_size, resize_method
        self.features = {True: [], False: []}
        self.num_frames = 0

    def update(self, frames: np.ndarray, real: bool) -> None:
        frames = resize_frames(frames, self.frame_size, self.resize_method)
        self.features[bool(real)].append(self.extractor(frames))
        self.num_frames += len(frames)

    def compute(self) -> FrechetResult:
        real, gen = (np.concatenate(self.features[k]) for k in (True, False))
        return frechet_distance(real, gen)


def make_random_inception_weights(path: str | Path, seed: int = 0, calib_images: int = 6) -> Path:
    """Write a randomly initialised torch-fidelity `FeatureExtractorInceptionV3` state dict.

    The file has exactly the keys and shapes of the real weights file, so torchmetrics loads it
    through `feature_extractor_weights_path` like the real one. From its default initialisation
    the network's activations vanish (features ~1e-8, FID ~1e-19); BatchNorm statistics are set
    from one pass over random smooth images so the features have a useful scale.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _KeepRandomInit(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None  # torch-fidelity always loads a file: keep the random init instead

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmpdir:
        empty = Path(tmpdir) / "empty.pt"
        torch.save({}, empty)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = _KeepRandomInit(INCEPTION_FEATURE_NAME, ["2048"], feature_extractor_weights_path=str(empty))
            for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
                bn.reset_running_stats()
                bn.momentum = None  # cumulative average over the one calibration pass
            smooth = torch.rand(calib_images, 3, 16, 16) * 255
            calib = torch.nn.functional.interpolate(smooth, size=(299, 299), mode="bilinear").to(torch.uint8)
            net.train()
            with torch.no_grad():
                net(calib)
            net.eval()
    with atomic_path(path) as tmp:
        torch.save(net.state_dict(), tmp)
    return path
