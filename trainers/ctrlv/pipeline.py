"""Two-stage Ctrl-V inference: BBox generator -> read boxes back -> render -> Box2Video.

Both stages run diffusers' StableVideoDiffusionPipeline (Euler scheduler, per-frame guidance rising
linearly from min to max across frames, `ctrlv.inference`: 30 steps each by default; the paper
profile runs Box2Video with Ctrl-V's evaluation settings, 50 steps, guidance 1 -> 5); the box
conditioning enters through hooks (bbox_generator.FrameConditioning, box2video.ControlledUNet). Clip k
uses the seed `seed + k` for both stages, as benchmark.generate does for SVD, so stage 2 starts from
the same noise as every other row of the table. By default the box video is generated once with the
configured guidance. `ctrlv.inference.bbox.best_of_gt=true` reproduces Ctrl-V's evaluation script
instead: one box video per guidance pair of `best_of_guidance` (each from the clip's seed), keeping
the one whose box mask (pixels brighter than Ctrl-V's threshold) has the highest IoU with the mask of
the GROUND-TRUTH box frames of every frame: it uses test boxes the variant is not given.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image
from tqdm.auto import tqdm

from data.atomic import atomic_write_json
from data.clip import read_box_record
from trainers.ctrlv.bbox_generator import FrameConditioning
from trainers.ctrlv.box2video import ControlledUNet, SpatioTemporalControlNet
from trainers.ctrlv.common import conditioning_frames
from trainers.ctrlv.render import Renderer, encode_box_latents, identity_slots, to_model_range
from trainers.models import count_params


@dataclass
class CtrlVInputs:
    """What one test clip gives Ctrl-V: its first frame and per-frame boxes; only the frames of the
    variant (first 1 or 3, plus the last for *-to-1) are ever read."""

    first_frame: np.ndarray  # uint8 [H,W,3]
    boxes: list  # per frame float [n,4] xyxy pixels of the first frame's size
    labels: list  # per frame int [n] COCO class ids
    track_ids: list  # per frame int [n] (-1 unknown)

    @classmethod
    def from_clip(cls, clip) -> CtrlVInputs:
        return cls(clip.frames[0], clip.boxes, clip.labels, clip.track_ids)

    @classmethod
    def from_testset(cls, testset_dir: str | Path, name: str) -> CtrlVInputs:
        """The benchmark's testset stage layout: first_frames/<name>.png and boxes/<name>.json."""
        root = Path(testset_dir)
        frame = np.asarray(Image.open(root / "first_frames" / f"{name}.png").convert("RGB"))
        boxes, labels, track_ids, _ = read_box_record(root / "boxes" / f"{name}.json")
        return cls(frame, boxes, labels, track_ids)


@dataclass
class CtrlVOutput:
    video: np.ndarray  # uint8 [T,H,W,3], the generated clip
    box_frames: np.ndarray  # uint8 [T,H,W,3], stage 1's generated box-frame video
    tracks: list[dict]  # per frame {"boxes", "labels", "track_ids"}: what Box2Video followed


def _video_unet(model_cfg, backbone):
    """Box2Video's backbone: an exported U-Net folder, or model.svd's U-Net."""
    from diffusers import UNetSpatioTemporalConditionModel

    from trainers.models import resolve_svd_source

    try:
        if backbone:
            return UNetSpatioTemporalConditionModel.from_pretrained(str(backbone))
        if model_cfg.svd == "full-random":
            torch.manual_seed(int(model_cfg.get("tiny_seed", 0)) + 1)
            return UNetSpatioTemporalConditionModel(num_frames=int(model_cfg.get("num_frames", 25)))
        return UNetSpatioTemporalConditionModel.from_pretrained(
            resolve_svd_source(model_cfg),
            subfolder="unet",
            revision=model_cfg.get("revision"),
            variant=model_cfg.get("variant"),
        )
    except (OSError, ValueError) as e:
        raise RuntimeError(
            f"could not load the Box2Video backbone U-Net "
            f"({'ctrlv.backbone=' + str(backbone) if backbone else 'model.svd=' + str(model_cfg.svd)}): {e}"
        ) from e


BOX_PIXEL_MIN_SUM = 50  # Ctrl-V zeroes generated box-frame pixels whose R+G+B is below 50


def box_mask_iou(truth: np.ndarray, generated: np.ndarray) -> float:
    """IoU of the box masks of two uint8 [T,H,W,3] box-frame videos over all frames (1 when both are
    empty): a ground-truth pixel is a box pixel when non-black, a generated one when its R+G+B >= 50."""
    gt = truth.astype(np.int64).sum(-1) > 0
    gen = generated.astype(np.int64).sum(-1) >= BOX_PIXEL_MIN_SUM
    union = np.logical_or(gt, gen).sum()
    return float(np.logical_and(gt, gen).sum() / union) if union else 1.0


def _uint8(frames) -> np.ndarray:
    return (np.clip(np.asarray(frames), 0, 1) * 255).round().astype(np.uint8)


class CtrlVPipeline:
    def __init__(self, cfg, bbox_pipe, video_pipe, controlnet):
        self.cfg, self.ctrlv = cfg, cfg.ctrlv
        self.bbox_pipe, self.video_pipe, self.controlnet = bbox_pipe, video_pipe, controlnet
        self.renderer = Renderer.from_cfg(cfg.ctrlv)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        cfg,
        bbox_unet: str | Path | None,
        controlnet: str | Path | None,
        backbone: str | Path | None = None,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> CtrlVPipeline:
        """cfg: a config composed with +ctrlv=base (model.*, ctrlv.*). bbox_unet: the BBox generator's
        exported U-Net folder; controlnet: the Box2Video ControlNet folder; backbone: the video U-Net
        folder. None means model.svd's U-Net (bbox_unet, backbone) or a fresh zero-initialised ControlNet
        (controlnet): the stages before training, e.g. with model=full-random for timing at full size."""
        from diffusers import StableVideoDiffusionPipeline

        from trainers.models import load_svd

        if cfg.model.svd == "full-random" and bbox_unet:
            raise ValueError("model=full-random builds random weights (timing only): give bbox_unet=None")
        parts = load_svd(cfg.model, unet_path=str(bbox_unet) if bbox_unet else None)
        video_unet = _video_unet(cfg.model, backbone)
        if controlnet is None:
            net = SpatioTemporalControlNet.from_unet(video_unet, cfg.ctrlv.controlnet.cond_embedding_channels)
        else:
            try:
                net = SpatioTemporalControlNet.from_pretrained(str(controlnet))
            except (OSError, ValueError) as e:
                raise RuntimeError(f"could not load the Box2Video ControlNet from {controlnet}: {e}") from e
        shared = dict(vae=parts.vae, image_encoder=parts.image_encoder, feature_extractor=parts.feature_extractor)
        sched = parts.scheduler
        bbox_pipe = StableVideoDiffusionPipeline(
            unet=parts.unet, scheduler=sched.__class__.from_config(sched.config), **shared
        )
        video_pipe = StableVideoDiffusionPipeline(
            unet=video_unet, scheduler=sched.__class__.from_config(sched.config), **shared
        )
        for p in (bbox_pipe, video_pipe):
            p.set_progress_bar_config(disable=True)
            p.to(device)
            if dtype != torch.float32:  # (a float32 .to(dtype) only makes diffusers warn)
                p.to(dtype=dtype)
        net.requires_grad_(False).eval().to(device)
        if dtype != torch.float32:
            net.to(dtype=dtype)
        return cls(cfg, bbox_pipe, video_pipe, net)

    @classmethod
    def from_runs(cls, cfg, bbox_run: str | Path, box2video_run: str | Path, **kw) -> CtrlVPipeline:
        """From the two stages' run folders (their exports unet/ and controlnet/); the backbone is the one
        Box2Video was trained on (its run's config.yaml, ctrlv.backbone)."""
        from omegaconf import OmegaConf

        run_cfg = Path(box2video_run) / "config.yaml"
        if not run_cfg.exists():
            raise FileNotFoundError(f"{run_cfg} not found: is {box2video_run} a finished Box2Video run?")
        backbone = OmegaConf.load(run_cfg).ctrlv.backbone
        return cls.load(cfg, Path(bbox_run) / "unet", Path(box2video_run) / "controlnet", backbone, **kw)

    @property
    def device(self) -> torch.device:
        return self.video_pipe.device

    def num_params(self) -> dict:
        """Parameters of the two-stage pipeline, counted as for SVD (U-Net + VAE + image encoder) per
        pipeline, plus the ControlNet: the BBox generator pipeline and the Box2Video pipeline each hold an
        SVD VAE and image encoder (Ctrl-V loads two SVD pipelines; this reproduces the paper's 5189M at full
        size). `num_params_unique` counts the shared frozen VAE / image encoder once."""
        n = dict(
            bbox_unet=count_params(self.bbox_pipe.unet),
            video_unet=count_params(self.video_pipe.unet),
            controlnet=count_params(self.controlnet),
            vae=count_params(self.video_pipe.vae),
            image_encoder=count_params(self.video_pipe.image_encoder),
        )
        shared = n["vae"] + n["image_encoder"]
        n["num_params"] = n["bbox_unet"] + n["video_unet"] + n["controlnet"] + 2 * shared
        n["num_params_unique"] = n["num_params"] - shared
        return n

    # ------------------------------------------------------------------ generation
    def given_frames(self, num_frames: int) -> list[int]:
        return conditioning_frames(self.ctrlv, num_frames)

    def _svd_call(self, pipe, image, gen_cfg, stage_cfg, seed):
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        return pipe(
            image,
            height=int(gen_cfg.height),
            width=int(gen_cfg.width),
            num_frames=int(gen_cfg.num_frames),
            num_inference_steps=int(stage_cfg.num_inference_steps),
            fps=int(gen_cfg.fps),
            motion_bucket_id=int(gen_cfg.motion_bucket_id),
            noise_aug_strength=float(gen_cfg.noise_aug_strength),
            min_guidance_scale=float(stage_cfg.min_guidance_scale),
            max_guidance_scale=float(stage_cfg.max_guidance_scale),
            decode_chunk_size=int(gen_cfg.decode_chunk_size),
            generator=g,
            output_type="np",
        ).frames[0]

    def _best_of_gt(self, image, gen_cfg, bbox_cfg, seed, truth: np.ndarray) -> np.ndarray:
        """Ctrl-V's ground-truth-selected box video (module docstring): the candidate of the highest
        box-mask IoU with `truth` (uint8 [T,H,W,3]); the first one on ties."""
        pairs = [tuple(float(v) for v in p) for p in bbox_cfg.best_of_guidance]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise ValueError(f"ctrlv.inference.bbox.best_of_guidance={pairs}: a list of [min, max] guidance pairs")
        best, best_iou = None, -1.0
        for lo, hi in pairs:
            stage = OmegaConf.merge(bbox_cfg, {"min_guidance_scale": lo, "max_guidance_scale": hi})
            frames = _uint8(self._svd_call(self.bbox_pipe, image, gen_cfg, stage, seed))
            iou = box_mask_iou(truth, frames)
            if iou > best_iou:
                best, best_iou = frames, iou
        return best

    @torch.no_grad()
    def __call__(self, inputs: CtrlVInputs, gen_cfg, seed: int) -> CtrlVOutput:
        T, H, W = int(gen_cfg.num_frames), int(gen_cfg.height), int(gen_cfg.width)
        if inputs.first_frame.shape[:2] != (H, W):
            raise ValueError(
                f"first frame is {inputs.first_frame.shape[:2]}, generation is {H}x{W}: the boxes "
                "must be in the pixels of the generated frames (resize the clip first)"
            )
        if len(inputs.boxes) < T:
            raise ValueError(f"boxes for {len(inputs.boxes)} frames, {T} frames are generated")
        given = self.given_frames(T)
        # only the given frames' boxes exist for Ctrl-V; the others are emptied before anything reads them
        keep = set(given)
        boxes = [
            np.asarray(inputs.boxes[j], np.float32).reshape(-1, 4) if j in keep else np.zeros((0, 4), np.float32)
            for j in range(T)
        ]
        labels = [
            np.asarray(inputs.labels[j], np.int64).reshape(-1) if j in keep else np.zeros(0, np.int64) for j in range(T)
        ]
        tracks = [
            np.asarray(inputs.track_ids[j], np.int64).reshape(-1) if j in keep else np.zeros(0, np.int64)
            for j in range(T)
        ]
        slots = identity_slots(tracks, given)
        renders = self.renderer.render(boxes, labels, slots, (H, W))
        vae = self.video_pipe.vae
        image = Image.fromarray(inputs.first_frame)

        # stage 1: the box-frame video
        box_latents = encode_box_latents(vae, to_model_range(renders[given])[None])
        bbox_cfg = self.ctrlv.inference.bbox
        with FrameConditioning(self.bbox_pipe.unet, given, box_latents):
            if bbox_cfg.get("best_of_gt", False):
                truth = self.renderer.render(
                    inputs.boxes[:T], inputs.labels[:T], identity_slots(inputs.track_ids[:T], given), (H, W)
                )
                box_frames = self._best_of_gt(image, gen_cfg, bbox_cfg, seed, truth)
            else:
                box_frames = _uint8(self._svd_call(self.bbox_pipe, image, gen_cfg, bbox_cfg, seed))

        # boxes back from the generated frames (identity colour -> slot -> track id)
        track_of_slot = {int(s): int(t) for sl, tr in zip(slots, tracks) for s, t in zip(sl, tr) if t >= 0}
        read = self.renderer.read(box_frames)
        if self.ctrlv.inference.keep_given_boxes:
            for j in given:
                read[j] = {"boxes": boxes[j], "slots": slots[j], "labels": labels[j]}
        out_tracks = [
            {
                "boxes": r["boxes"],
                "labels": r["labels"],
                "track_ids": np.array([track_of_slot.get(int(s), -1) for s in r["slots"]], np.int64),
            }
            for r in read
        ]

        # stage 2: Box2Video on the box frames
        control = (
            self.renderer.render(
                [r["boxes"] for r in read], [r["labels"] for r in read], [r["slots"] for r in read], (H, W)
            )
            if self.ctrlv.inference.rerender
            else box_frames
        )
        control_latents = encode_box_latents(vae, to_model_range(control)[None])
        with ControlledUNet(
            self.video_pipe.unet,
            self.controlnet,
            control_latents,
            self.ctrlv.controlnet.conditioning_scale,
            self.ctrlv.inference.uncond_control,
        ):
            video = _uint8(self._svd_call(self.video_pipe, image, gen_cfg, self.ctrlv.inference.box2video, seed))
        return CtrlVOutput(video=video, box_frames=box_frames, tracks=out_tracks)


def generate_ctrlv_videos(
    pipe: CtrlVPipeline, inputs: Sequence[CtrlVInputs], names: Sequence[str], gen_cfg, out_dir: str | Path
) -> dict:
    """Like benchmark.generate.generate_videos, for Ctrl-V: writes out_dir/frames/<name>/ (+ mp4/<name>.mp4,
    and with ctrlv.inference.save_box_frames box_frames/<name>/ and boxes/<name>.json). A clip whose
    frames folder exists is skipped. Returns the timing of both stages together (resumed clips excluded)
    and the pipeline's parameter counts."""
    from data.video_io import kept_video, write_frames, write_video

    out_dir = Path(out_dir)
    times: list[float] = []  # per generated video
    cuda = pipe.device.type == "cuda"
    for k, (clip_in, name) in enumerate(tqdm(list(zip(inputs, names)), desc="generate ctrl-v", unit="video")):
        folder = out_dir / "frames" / name
        if folder.is_dir() and kept_video(folder):  # kept from an earlier attempt only when every frame decodes
            continue
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = pipe(clip_in, gen_cfg, int(gen_cfg.seed) + k)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if pipe.ctrlv.inference.save_box_frames:
            write_frames(out_dir / "box_frames" / name, out.box_frames)
            atomic_write_json(
                out_dir / "boxes" / f"{name}.json",
                {"frames": [{k2: np.asarray(v).tolist() for k2, v in t.items()} for t in out.tracks]},
            )
        if gen_cfg.get("save_mp4", True):
            write_video(out_dir / "mp4" / f"{name}.mp4", out.video, fps=float(gen_cfg.fps))
        write_frames(folder, out.video)  # last: a clip counts as done only once its frames exist
    from trainers.timing import generation_timing  # the same timing rule as the SVD rows (Table I)

    return dict(generation_timing(times, len(names)), **pipe.num_params())
