"""`FakeRunner`: a StageRunner (benchmark/stage_runner.py) for tests of the machinery. It writes tiny
files instead of training / generating / scoring and counts its calls; everything rendered from its
numbers says FAKE. Tests import it as `from fakes import FakeRunner` (pytest puts tests/ on sys.path)
and the command line takes it as `runner=fakes:FakeRunner`.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from data.atomic import data_entries
from metrics.detectors.base import Detections


class FakeRunner:
    """Writes tiny files instead of training / generating / scoring, and counts calls.

    `fail_at=k` raises at the start of the k-th stage it is asked to run (1-based), as a crash
    mid-table; `fail_row=name` fails that row's epoch-2 training every time (a broken row). Environment hooks for subprocess tests: LSA_FAKE_RUNNER_SLEEP (seconds per stage),
    LSA_FAKE_RUNNER_LOG (a file that gets one "start/end <kind> <hash>" line per event).
    The numbers it returns are placeholders: everything rendered from them says FAKE.
    """

    is_fake = True

    def __init__(
        self,
        fail_at: int | None = None,
        sleep: float | None = None,
        log: str | Path | None = None,
        frame_hw: tuple[int, int] = (16, 24),
        num_frames: int = 3,
        fail_row: str | None = None,
    ):
        self.fail_at, self.fail_row = fail_at, fail_row
        self.sleep = float(os.environ.get("LSA_FAKE_RUNNER_SLEEP", 0.0)) if sleep is None else sleep
        log = log if log is not None else os.environ.get("LSA_FAKE_RUNNER_LOG")
        self.log = Path(log) if log else None
        self.frame_hw, self.num_frames = frame_hw, num_frames
        self.calls: Counter = Counter()  # kind -> number of calls
        self.history: list[tuple[str, str]] = []  # (kind, hash) in call order

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
        return {
            "frames": out_dir / "frames",
            "boxes": out_dir / "boxes",
            "clips": clips,
            "num_videos": n,
            "num_frames": self.num_frames,
            "height": h,
            "width": w,
        }

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
                f.write(
                    json.dumps(
                        {
                            "step": s,
                            "epoch": stage.params["epoch"],
                            "loss": diff + feat,
                            "loss_diff": diff,
                            "loss_feat": feat,
                        }
                    )
                    + "\n"
                )
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
                continue  # resumed: this clip is done
            rng = np.random.default_rng([int(stage.hash, 16) % (2**32), k])  # per clip, as real seeds
            src = _read_frames(real / name)
            noisy = np.clip(src.astype(int) + rng.integers(-30, 30, src.shape), 0, 255).astype(np.uint8)
            _write_frames(out_dir / "frames" / name, noisy)
        self._log("end", stage)
        return {
            "frames": out_dir / "frames",
            "num_videos": len(names),
            "num_frames": self.num_frames,
            "seconds": time.perf_counter() - t0,
            "num_params": 1234567,
            "checkpoint_used": None if checkpoint is None else Path(checkpoint).name,
        }

    def merge_generate(self, stage, cfg, out_dir, parts, *, test_clips):
        return {
            **parts[0],
            "num_videos": sum(p["num_videos"] for p in parts),
            "seconds": sum(p["seconds"] for p in parts),
            "frames": out_dir / "frames",
        }

    def run_ctrlv_train(self, stage, cfg, backbone, out_dir):
        self._enter(stage)
        rng = self._rng(stage)
        with open(out_dir / "log.jsonl", "w") as f:
            for s in range(1, 4):
                loss = float(rng.uniform(0.1, 1.0))
                f.write(json.dumps({"step": s, "epoch": 1, "loss": loss, "loss_diff": loss}) + "\n")
        (out_dir / "weights.json").write_text(
            json.dumps({"stage": cfg["ctrlv"]["stage"], "backbone": None if backbone is None else Path(backbone).name})
        )
        self._log("end", stage)
        return {"log": out_dir / "log.jsonl", "checkpoint": out_dir / "weights.json"}

    def run_generate_ctrlv(self, stage, cfg, bbox_run, box2video_run, out_dir, *, test_clips, shard=None):
        res = self.run_generate(stage, cfg, box2video_run, out_dir, test_clips=test_clips, shard=shard)
        res["num_params"] = 2 * res["num_params"]  # two pipelines, as Ctrl-V's count
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
        shift = rng.uniform(0.0, 2.0)  # how far this fake row's videos are from the real ones
        real = rng.normal(size=(n, t + 1, d))
        pv = PerVideo(
            list(names),
            fvd={"real": real[:, 0], "gen": real[:, 0] + rng.normal(shift, 1.0, (n, d))},
            fid={"real": real[:, 1:], "gen": real[:, 1:] + rng.normal(shift, 1.0, (n, t, d))},
        )
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
                    preds.append(
                        Detections(boxes + rng.normal(0, 2 * shift, boxes.shape), rng.uniform(0.3, 1, 3), np.full(3, 2))
                    )
                pv.detections.append((refs, preds, (h, w)))
        pv.save(Path(out_dir) / PER_VIDEO_FILE)
        full = statistic(pv, det_cfg if pv.detections is not None else None, per_frame=True)(np.arange(n))
        # the shape metrics.evaluate.evaluate returns (metrics/evaluate.py), with placeholder values
        metrics = {
            "n_videos": n,
            "num_frames": t,
            "fake": True,
            "fvd": {"value": full["fvd.value"], "n_real": n, "n_gen": n},
            "fid": {"value": full["fid.value"], "n_real": n * t, "n_gen": n * t},
        }
        if pv.detections is not None:
            per_frame = {k: [full[f"det.per_frame.{k}.{j}"] for j in range(t)] for k in ("mAP", "mIoU")}
            metrics["det"] = {
                "mAP": full["det.mAP"],
                "mIoU": full["det.mIoU"],
                "units": "percent",
                "n_videos": n,
                "detector": det_cfg["detector"]["name"],
                "per_frame": per_frame,
            }
        return metrics


def _write_frames(folder: Path, frames: np.ndarray) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for j, fr in enumerate(frames):
        Image.fromarray(fr).save(folder / f"{j:06d}.png")


def _read_frames(folder: Path) -> np.ndarray:
    from PIL import Image

    return np.stack(
        [np.asarray(Image.open(p).convert("RGB")) for p in data_entries(folder, dirs=False) if p.suffix == ".png"]
    )
