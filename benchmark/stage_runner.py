"""What runs a stage: the `StageRunner` protocol, one method per stage kind.

The stage executor (`benchmark.local.call_runner`) calls one method per stage kind with the stage's full
resolved config (`stage.run_cfg`, a plain dict) and the stage folder `out_dir` (runs/<hash>/) to
write into. It may be a folder left by an interrupted attempt (resume from what is there, e.g. the
trainer's own checkpoints). Paths in the returned dict must lie inside `out_dir`; the store keeps
them relative. The loop writes `result.json` and `DONE` after the method returns; an exception
leaves the stage pending.

The real implementation is `benchmark.trainer_runner.TrainerRunner` (wired to trainers/ and metrics/);
the test double `FakeRunner` is in tests/fakes.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable


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

    def run_generate_ctrlv(
        self, stage, cfg: dict, bbox_run: Path, box2video_run: Path, out_dir: Path, *, test_clips: Path
    ) -> dict:
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
