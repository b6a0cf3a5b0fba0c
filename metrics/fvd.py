"""FVD: I3D (Kinetics-400) logits of whole videos, then the Frechet distance.

Two weight formats, both local files:
- `torchscript`: StyleGAN-V's `i3d_torchscript.pt` (a port of the TF-Hub I3D that the original
  TF FVD uses), called as `net(x, rescale=False, resize=False, return_features=True)` on
  x float in [-1, 1], [B, 3, T, 224, 224] -> [B, 400] pre-softmax logits.
- `cdfvd`: cd-fvd's PyTorch `InceptionI3d` state dict (`i3d_pretrained_400.pt`), logits averaged
  over time, same input; needs T >= 9 at 224x224.

Preprocessing (docs/metrics.md): frames resized to 256x410, scaled to [-1, 1], then
`center` (Ctrl-V, default): shorter side to 224 with nearest interpolation (Ctrl-V calls
F.interpolate without a mode) and a centre crop; or `squash` (the original TF FVD): 224x224
bilinear, TF1-style (torch-fidelity's port of tf.image.resize_bilinear).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data.atomic import atomic_path
from data.cli import InputError, MissingFile
from metrics.frames import resize_frames
from metrics.frechet import FrechetResult, frechet_distance

I3D_FORMATS = ("auto", "torchscript", "cdfvd")


class I3DFeatures:
    """[B,3,T,224,224] float in [-1,1] -> float32 [B, feature_dim] logits, whatever the file format."""

    def __init__(self, weights: str | Path, fmt: str = "auto", device: str = "cpu", feature_dim: int = 400):
        if fmt not in I3D_FORMATS:
            raise InputError(f"fvd.format={fmt!r} is unknown; valid: {I3D_FORMATS}")
        path = Path(str(weights)).expanduser()
        if not path.is_file():
            raise MissingFile(f"fvd.weights={str(weights)!r}: no such file (see docs/metrics.md)")
        self.weights, self.device, self.feature_dim = str(path), device, int(feature_dim)
        errors = {}
        for candidate in ("torchscript", "cdfvd") if fmt == "auto" else (fmt,):
            try:
                self.net = _LOADERS[candidate](path, device)
                self.format = candidate
                break
            except Exception as e:  # each loader fails in its own way on a foreign file
                errors[candidate] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
        else:
            tried = "; ".join(f"as {k}: {v}" for k, v in errors.items())
            raise InputError(
                f"fvd.weights={str(path)!r} is not an I3D this code can load ({tried}). Expected "
                f"StyleGAN-V's i3d_torchscript.pt (TorchScript) or cd-fvd's i3d_pretrained_400.pt "
                f"(InceptionI3d state dict); see docs/metrics.md"
            )

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> np.ndarray:
        x = x.to(self.device, torch.float32)
        try:
            if self.format == "torchscript":
                out = self.net(x, rescale=False, resize=False, return_features=True)
            else:
                out = self.net(x)
        except Exception as e:
            raise RuntimeError(
                f"I3D {self.weights} ({self.format}) failed on input {tuple(x.shape)}: "
                f"{type(e).__name__}: {str(e)[:300]}"
            ) from e
        if out.ndim != 2 or out.shape != (x.shape[0], self.feature_dim):
            raise ValueError(
                f"I3D {self.weights} returned {tuple(out.shape)}, expected "
                f"({x.shape[0]}, {self.feature_dim}) (fvd.feature_dim)"
            )
        return out.float().cpu().numpy()


@contextlib.contextmanager
def _quiet_jit():
    """torch.jit is deprecated in favour of torch.export, but StyleGAN-V's file is TorchScript."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*")
        yield


def _load_torchscript(path: Path, device: str):
    with _quiet_jit():
        net = torch.jit.load(str(path), map_location=device).eval()
    if not hasattr(net, "forward"):
        raise TypeError("TorchScript archive without a forward method")
    return net


def _load_cdfvd(path: Path, device: str):
    try:
        from cdfvd.third_party.i3d.pytorch_i3d import InceptionI3d
    except ImportError as e:
        raise ImportError("cd-fvd is not installed (pip install cd-fvd)") from e
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*looks like a TorchScript archive.*")
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(f"expected a state dict, found {type(state).__name__}")
    net = InceptionI3d(400, in_channels=3)
    net.load_state_dict(state)
    return net.to(device).eval()


_LOADERS = {"torchscript": _load_torchscript, "cdfvd": _load_cdfvd}


def to_i3d_input(
    frames: np.ndarray, crop: str = "center", resolution: int = 224, center_interp: str = "nearest"
) -> torch.Tensor:
    """uint8 [T,H,W,3] (already at 256x410) -> float [3,T,res,res] in [-1,1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # [T,3,H,W]
    if crop == "center":
        x = x / 127.5 - 1.0
        h, w = x.shape[-2:]
        scale = resolution / min(h, w)
        size = (resolution, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), resolution)
        kwargs = {} if center_interp in ("nearest", "area") else {"align_corners": False}
        x = F.interpolate(x, size=size, mode=center_interp, **kwargs).clamp(-1.0, 1.0)
        top, left = (x.shape[-2] - resolution) // 2, (x.shape[-1] - resolution) // 2
        x = x[..., top : top + resolution, left : left + resolution]
    elif crop == "squash":
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

        x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(resolution, resolution), align_corners=False)
        x = x / 127.5 - 1.0
    else:
        raise InputError(f"fvd.crop={crop!r} is unknown; valid: center, squash")
    return x.permute(1, 0, 2, 3).contiguous()  # [3,T,h,w]


class FVDMetric:
    """Accumulates I3D features of real and generated videos (batched); `compute()` gives the FVD."""

    def __init__(
        self,
        extractor: I3DFeatures,
        frame_size=(256, 410),
        resize_method: str = "bicubic",
        crop: str = "center",
        resolution: int = 224,
        center_interp: str = "nearest",
        num_frames: int | None = None,
        batch_size: int = 8,
    ):
        self.extractor, self.frame_size, self.resize_method = extractor, frame_size, resize_method
        self.crop, self.resolution, self.center_interp = crop, int(resolution), center_interp
        self.num_frames, self.batch_size = num_frames, int(batch_size)
        self.pending = {True: [], False: []}
        self.features = {True: [], False: []}
        self.num_videos = 0

    def update(self, video: np.ndarray, real: bool) -> None:
        if self.num_frames:
            if len(video) < self.num_frames:
                raise InputError(f"fvd.num_frames={self.num_frames} but a video has only {len(video)} frames")
            video = video[: self.num_frames]
        video = resize_frames(video, self.frame_size, self.resize_method)
        self.pending[bool(real)].append(to_i3d_input(video, self.crop, self.resolution, self.center_interp))
        self.num_videos += 1
        if len(self.pending[bool(real)]) >= self.batch_size:
            self._flush(bool(real))

    def _flush(self, real: bool) -> None:
        if self.pending[real]:
            self.features[real].append(self.extractor(torch.stack(self.pending[real])))
            self.pending[real] = []

    def flush(self) -> None:
        """Run the I3D on the last, partial batch of each side (compute() does it; so does a shard)."""
        self._flush(True)
        self._flush(False)

    def compute(self) -> FrechetResult:
        self.flush()
        real, gen = (np.concatenate(self.features[k]) for k in (True, False))
        return frechet_distance(real, gen)

    @property
    def protocol(self) -> str:
        crop = (
            f"shorter side {self.resolution} ({self.center_interp}) + centre crop"
            if self.crop == "center"
            else f"squash to {self.resolution}x{self.resolution} (TF1 bilinear)"
        )
        size = "x".join(map(str, self.frame_size)) if self.frame_size else "as read"
        return f"I3D {self.extractor.format} logits; frames {size} ({self.resize_method}), {crop}, [-1,1]"


class _TinyI3D(torch.nn.Module):
    """Same call signature and output as StyleGAN-V's scripted I3D, a few hundred parameters.

    Features 0-2 are the per-channel means of the (rescaled, resized) input and 3-5 the mean
    absolute frame-to-frame change per channel, so tests can check the preprocessing exactly;
    the other 394 come from a random 3D conv, so different videos give different features.
    """

    def __init__(self, feature_dim: int = 400, width: int = 8):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, width, kernel_size=(3, 7, 7), stride=(1, 4, 4), padding=(1, 3, 3))
        self.head = torch.nn.Linear(width, feature_dim - 6)

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        if rescale:  # the real net's option: [0,255] -> [-1,1]
            x = x / 127.5 - 1.0
        if resize:
            x = F.interpolate(x, size=[x.shape[2], 224, 224], mode="trilinear", align_corners=False)
        means = x.mean(dim=[2, 3, 4])
        if x.shape[2] > 1:
            motion = (x[:, :, 1:] - x[:, :, :-1]).abs().mean(dim=[2, 3, 4])
        else:
            motion = torch.zeros_like(means)
        h = torch.relu(self.conv(x)).mean(dim=[2, 3, 4])
        feats = torch.cat([means, motion, self.head(h)], dim=1)
        if return_features:
            return feats
        return torch.softmax(feats, dim=1)


def make_tiny_i3d(path: str | Path, seed: int = 0, feature_dim: int = 400) -> Path:
    """Script a tiny I3D with StyleGAN-V's call signature and save it with torch.jit.save (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with _quiet_jit():
            net = torch.jit.script(_TinyI3D(feature_dim).eval())
    with atomic_path(path) as tmp, _quiet_jit():
        torch.jit.save(net, str(tmp))
    return path
