"""What runs a stage: the `StageRunner` protocol, and `FakeRunner` for tests of the machinery.

The runner loop (`benchmark.runner.run_table`) calls one method per stage kind with the stage's full
resolved config (`stage.run_cfg`, a plain dict) and the stage folder `out_dir` (runs/<hash>/) to
write into. It may be a folder left by an interrupted attempt (resume from what is there, e.g. the
trainer's own checkpoints). Paths in the returned dict must lie inside `out_dir`; the store keeps
them relative. The loop writes `result.json` and `DONE` after the method returns; an exception
leaves the stage pending.

The real implementation is `benchmark.runner_impl.TrainerRunner` (wired to trainers/ and metrics/).
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from data.atomic import data_entries
from metrics.detectors.base import Detections


@runtime_checkable
class StageRunner(Protocol):
    def run_testset(self, stage, cfg: dict, out_dir: Path) -> dict:
        """Write the first `data.test.num_clips` clips of the test split of `cfg['data']`:
        frames/<clip>/000000.png... (lossless, what metrics read), first_frames/<clip>.png,
        boxes/<clip>.json, optionally videos/<clip>.mp4. Return at least
        {"frames": <dir>, "clips": [names], "num_videos": N, "num_frames": T, "height": H, "width": W}."""

    def run_train(self, stage, cfg: dict, init_from: Path | None, out_dir: Path) -> dict:
        """Train exactly epoch `stage.params['epoch']` (cfg['train']['epochs'] is already that epoch;
        the objective `stage.params['objective']` is 'diffusion' or 'lsa', implied by cfg['schedule'])
        starting from the finished train stage folder `init_from` (None = the base model). Return
        {"log": <the JSONL loss log>, ...}; generation later loads the fine-tuned weights from `out_dir`."""

    def run_generate(self, stage, cfg: dict, checkpoint: Path | None, out_dir: Path, *, test_clips: Path) -> dict:
        """Generate one video per test clip of the testset folder `test_clips` from its first frame
        with the fine-tuned weights in the train stage folder `checkpoint` (None = the base model),
        settings cfg['benchmark']['generate']. Write frames/<clip>/ (same names as the test set) and
        videos/<clip>.mp4. Return {"frames": <dir>, "num_videos": N, "num_frames": T,
        "seconds": wall time of generating them, "num_params": parameters of the inference pipeline}."""

    def run_ctrlv_train(self, stage, cfg: dict, backbone: Path | None, out_dir: Path) -> dict:
        """Train one Ctrl-V stage (cfg['ctrlv']['stage']: 'bbox' -> out_dir/unet, 'box2video' ->
        out_dir/controlnet) for cfg['train']['epochs'] epochs; Box2Video steers the U-Net exported by the
        train stage folder `backbone` (None = the base model). Return {"log": <the JSONL loss log>, ...}."""

    def run_generate_ctrlv(self, stage, cfg: dict, bbox_run: Path, box2video_run: Path, out_dir: Path, *,
                           test_clips: Path) -> dict:
        """As run_generate, with Ctrl-V's two-stage pipeline (BBox generator run folder `bbox_run`,
        Box2Video run folder `box2video_run`) fed each test clip's first frame and the boxes its
        variant is given; the same return keys ("seconds", "num_params" of the two-stage pipeline)."""

    def run_evaluate(self, stage, cfg: dict, videos_dir: Path, out_dir: Path, *, real_dir: Path) -> dict:
        """Score the generated frame folders `videos_dir` against the real ones `real_dir` (paired by
        name) with cfg['metrics'] (its det.detector already set for this stage's detector). Return
        what metrics.evaluate.evaluate returns: {"fvd": {"value"}, "fid": {"value"}, "det": {"mAP",
        "mIoU" (percent), "per_frame": {"mAP": [...], "mIoU": [...]}}, "n_videos", ...}; the table
        columns read dotted paths of it (ablations/table_*.yaml `key`). The loop saves it as
        metrics.json. Optionally write detections/<clip>.json for the frame-grid figure."""

    # Optional: splitting generate / evaluate stages into shards (benchmark.shards > 1, benchmark/shards.py).
    # run_generate / run_generate_ctrlv / run_evaluate then also get `shard=Shard(index, count, folder)`:
    # do only that shard's clips (benchmark.shards.shard_names; generation with each clip's own seed of
    # the unsharded run), keep per-shard files in `shard.folder`, and return the shard's record (JSON,
    # paths inside out_dir). Once every shard has its record, the loop calls
    #     merge_generate(stage, cfg, out_dir, parts, *, test_clips) -> the generate result
    #     merge_evaluate(stage, cfg, out_dir, parts, *, videos_dir, real_dir) -> the metrics dict
    # with the records in shard order; they must return what the unsharded stage returns. A runner
    # without merge_<kind> cannot be split (a clear error names benchmark.shards).


class FakeRunner:
    """Writes tiny files instead of training / generating / scoring, and counts calls.

    `fail_at=k` raises at the start of the k-th stage it is asked to run (1-based), as a crash
    mid-table; `fail_row=name` fails that row's epoch-2 training every time (a broken row). Environment hooks for subprocess tests: LSA_FAKE_RUNNER_SLEEP (seconds per stage),
    LSA_FAKE_RUNNER_LOG (a file that gets one "start/end <kind> <hash>" line per event).
    The numbers it returns are placeholders: everything rendered from them says FAKE.
    """

    is_fake = True

    def __init__(self, fail_at: int | None = None, sleep: float | None = None, log: str | Path | None = None,
                 frame_hw: tuple[int, int] = (16, 24), num_frames: int = 3, fail_row: str | None = None):
        self.fail_at, self.fail_row = fail_at, fail_row
        self.sleep = float(os.environ.get("LSA_FAKE_RUNNER_SLEEP", 0.0)) if sleep is None else sleep
        log = log if log is not None else os.environ.get("LSA_FAKE_RUNNER_LOG")
        self.log = Path(log) if log else None
        self.frame_hw, self.num_frames = frame_hw, num_frames
        self.calls: Counter = Counter()     # kind -> number of calls
        self.history: list[tuple[str, str]] = []   # (kind, hash) in call order

    # ------------------------------------------------------------------ bookkeeping
    def _enter(self, stage):
        self.calls[stage.kind] += 1
        self.history.append((stage.kind, stage.hash))
        self._log("start", stage)
        if self.fail_at is not None and len(self.history) == self.fail_at:
            raise RuntimeError(f"FakeRunner: simulated crash at stage {self.fail_at} ({stage.kind} {stage.hash})")
        if self.sleep:
            time.sleep(self.sleep)

    def _log(self, event, stage):
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"{event} {stage.kind} {stage.hash}\n")

    def _rng(self, stage) -> np.random.Generator:
        return np.random.default_rng(int(stage.hash, 16) % (2**32))

    # ------------------------------------------------------------------ stages
    def run_testset(self, stage, cfg, out_dir):
        self._enter(stage)
        n = int(cfg["data"]["test"]["num_clips"])
        rng = self._rng(stage)
        h, w = self.frame_hw
        clips = [f"clip_{k:04d}" for k in range(n)]
        for name in clips:
            frames = rng.integers(0, 255, (self.num_frames, h, w, 3), dtype=np.uint8)
            _write_frames(out_dir / "frames" / name, frames)
            boxes = [{"boxes": [[2.0, 2.0, 10.0, 9.0]], "labels": [2], "track_ids": [0]}] * self.num_frames
            (out_dir / "boxes").mkdir(parents=True, exist_ok=True)
            (out_dir / "boxes" / f"{name}.json").write_text(json.dumps({"frames": boxes}))
        self._log("end", stage)
        return {"frames": out_dir / "frames", "boxes": out_dir / "boxes", "clips": clips, "num_videos": n,
                "num_frames": self.num_frames, "height": h, "width": w}

    def run_train(self, stage, cfg, init_from, out_dir):
        if self.fail_row in stage.rows and stage.params["epoch"] == 2:
            raise RuntimeError(f"planned failure of {self.fail_row}")
        self._enter(stage)
        chain = []
        start = 0
        if init_from is not None:
            prev = json.loads((Path(init_from) / "weights.json").read_text())
            chain, start = prev["chain"], prev["steps"]
        rng = self._rng(stage)
        steps = 3
        with open(out_dir / "log.jsonl", "w") as f:
            for s in range(start + 1, start + steps + 1):
                diff = float(rng.uniform(0.1, 1.0))
                feat = float(rng.uniform(0.0, 0.01)) if stage.params["objective"] == "lsa" else 0.0
                f.write(json.dumps({"step": s, "epoch": stage.params["epoch"], "loss": diff + feat,
                                    "loss_diff": diff, "loss_feat": feat}) + "\n")
        (out_dir / "weights.json").write_text(json.dumps({"chain": chain + [stage.hash], "steps": start + steps}))
        self._log("end", stage)
        return {"log": out_dir / "log.jsonl", "checkpoint": out_dir / "weights.json"}

    def run_generate(self, stage, cfg, checkpoint, out_dir, *, test_clips, shard=None):
        from benchmark.shards import shard_names
        self._enter(stage)
        t0 = time.perf_counter()
        real = Path(test_clips) / "frames"
        names = [p.name for p in data_entries(real, dirs=True)]
        start = 0
        if shard is not None:
            names, start = shard_names(names, shard.index, shard.count)
        for k, name in enumerate(names, start=start):
            if (out_dir / "frames" / name).is_dir():
                continue                      # resumed: this clip is done
            rng = np.random.default_rng([int(stage.hash, 16) % (2**32), k])    # per clip, as real seeds
            src = _read_frames(real / name)
            noisy = np.clip(src.astype(int) + rng.integers(-30, 30, src.shape), 0, 255).astype(np.uint8)
            _write_frames(out_dir / "frames" / name, noisy)
        self._log("end", stage)
        return {"frames": out_dir / "frames", "num_videos": len(names), "num_frames": self.num_frames,
                "seconds": time.perf_counter() - t0, "num_params": 1234567,
                "checkpoint_used": None if checkpoint is None else Path(checkpoint).name}

    def merge_generate(self, stage, cfg, out_dir, parts, *, test_clips):
        return {**parts[0], "num_videos": sum(p["num_videos"] for p in parts),
                "seconds": sum(p["seconds"] for p in parts), "frames": out_dir / "frames"}

    def run_ctrlv_train(self, stage, cfg, backbone, out_dir):
        self._enter(stage)
        rng = self._rng(stage)
        with open(out_dir / "log.jsonl", "w") as f:
            for s in range(1, 4):
                loss = float(rng.uniform(0.1, 1.0))
                f.write(json.dumps({"step": s, "epoch": 1, "loss": loss, "loss_diff": loss}) + "\n")
        (out_dir / "weights.json").write_text(json.dumps({"stage": cfg["ctrlv"]["stage"],
                                                          "backbone": None if backbone is None else Path(backbone).name}))
        self._log("end", stage)
        return {"log": out_dir / "log.jsonl", "checkpoint": out_dir / "weights.json"}

    def run_generate_ctrlv(self, stage, cfg, bbox_run, box2video_run, out_dir, *, test_clips, shard=None):
        res = self.run_generate(stage, cfg, box2video_run, out_dir, test_clips=test_clips, shard=shard)
        res["num_params"] = 2 * res["num_params"]      # two pipelines, as Ctrl-V's count
        return res

    def run_evaluate(self, stage, cfg, videos_dir, out_dir, *, real_dir, shard=None):
        from benchmark.shards import shard_names
        self._enter(stage)
        names = [p.name for p in data_entries(videos_dir, dirs=True)]
        if shard is not None:
            names, _ = shard_names(names, shard.index, shard.count)
            self._log("end", stage)
            return {"num_videos": len(names), "names": names}
        metrics = self._metrics(stage, cfg, names, out_dir)
        (out_dir / "metrics.json").write_text(json.dumps(metrics))
        self._log("end", stage)
        return metrics

    def merge_evaluate(self, stage, cfg, out_dir, parts, *, videos_dir, real_dir):
        return self._metrics(stage, cfg, [n for p in parts for n in p["names"]], out_dir)

    def _metrics(self, stage, cfg, names: list[str], out_dir: Path) -> dict:
        """Placeholder per-video quantities (random features of a few dimensions, random boxes), saved
        as per_video.npz, and the metrics computed from them by the code the bootstrap uses
        (metrics/per_video.py), so a fake table's intervals surround its numbers."""
        from metrics.per_video import PER_VIDEO_FILE, PerVideo, statistic
        rng = self._rng(stage)
        n, t, d = len(names), self.num_frames, 4
        shift = rng.uniform(0.0, 2.0)                       # how far this fake row's videos are from the real ones
        real = rng.normal(size=(n, t + 1, d))
        pv = PerVideo(list(names), fvd={"real": real[:, 0], "gen": real[:, 0] + rng.normal(shift, 1.0, (n, d))},
                      fid={"real": real[:, 1:], "gen": real[:, 1:] + rng.normal(shift, 1.0, (n, t, d))})
        det_cfg = (cfg.get("metrics") or {}).get("det") or {}
        if "protocols" in det_cfg:
            h, w = self.frame_hw
            pv.detections = []
            for _ in names:
                refs, preds = [], []
                for _ in range(t):
                    xy = rng.uniform(0, [w / 2, h / 2], (3, 2))
                    boxes = np.concatenate([xy, xy + [w / 2, h / 2]], axis=1)
                    refs.append(Detections(boxes, np.full(3, 0.95), np.full(3, 2)))
                    preds.append(Detections(boxes + rng.normal(0, 2 * shift, boxes.shape), rng.uniform(0.3, 1, 3),
                                            np.full(3, 2)))
                pv.detections.append((refs, preds, (h, w)))
        pv.save(Path(out_dir) / PER_VIDEO_FILE)
        full = statistic(pv, det_cfg if pv.detections is not None else None, per_frame=True)(np.arange(n))
        # the shape metrics.evaluate.evaluate returns (metrics/evaluate.py), with placeholder values
        metrics = {"n_videos": n, "num_frames": t, "fake": True,
                   "fvd": {"value": full["fvd.value"], "n_real": n, "n_gen": n},
                   "fid": {"value": full["fid.value"], "n_real": n * t, "n_gen": n * t}}
        if pv.detections is not None:
            per_frame = {k: [full[f"det.per_frame.{k}.{j}"] for j in range(t)] for k in ("mAP", "mIoU")}
            metrics["det"] = {"mAP": full["det.mAP"], "mIoU": full["det.mIoU"], "units": "percent", "n_videos": n,
                              "detector": det_cfg["detector"]["name"], "per_frame": per_frame}
        return metrics


def _write_frames(folder: Path, frames: np.ndarray) -> None:
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    for j, fr in enumerate(frames):
        Image.fromarray(fr).save(folder / f"{j:06d}.png")


def _read_frames(folder: Path) -> np.ndarray:
    from PIL import Image
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in data_entries(folder, dirs=False) if p.suffix == ".png"])
