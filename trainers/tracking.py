"""Training trackers (train.report_to): TensorBoard or Weights & Biases through accelerate's trackers.

What a run reports, beside its own `log.jsonl`:
- at start, the full resolved config: as the tracker's run config (TensorBoard: hparams, and the
  YAML as the text summary `config`; W&B: the run config, `files/config.yaml` of its run);
- every optimizer step: each loss term (`loss`, `loss_diff`, `loss_feat`, the weighted terms and
  the objective's weights `w_diff`, `w_feat`), the learning rate, the gradient norm, sigma;
- every `train.validation_every` steps, the validation videos (trainers/validation.py): as an
  animated image in TensorBoard (what its image dashboard plays), as the mp4 in W&B.

W&B runs offline by default (`train.wandb_mode`): nothing leaves the machine, the run folder lands
under `<run>/wandb/` and `wandb sync` uploads it later. Both trackers are the `tracking` extra
(`pip install -e .[tracking]`); asking for one that is not installed is a config error.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from data.cli import InputError

REPORT_TO = ("none", "tensorboard", "wandb")
PROJECT = "lsa"  # the tracker's project; TensorBoard writes under <run>/lsa/


def tracker_choice(t) -> str | None:
    """accelerate's `log_with` for `train.report_to` (None: no tracker), checking the package is there."""
    choice = t.get("report_to", "none") or "none"
    if choice not in REPORT_TO:
        raise InputError(f"train.report_to={choice!r}: valid are {', '.join(REPORT_TO)}")
    if choice == "none":
        return None
    if importlib.util.find_spec(choice) is None:
        raise InputError(
            f"train.report_to={choice} needs the package {choice!r}, which is not installed: "
            "pip install -e .[tracking], or train.report_to=none"
        )
    return choice


def flat_config(cfg) -> dict:
    """The resolved config as one level of dotted keys; lists and null as text (TensorBoard's hparams
    take numbers, strings and booleans only)."""
    out: dict = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            key = prefix[:-1]
            out[key] = node if isinstance(node, (bool, int, float, str)) else str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def gif_bytes(frames: np.ndarray, fps: float) -> bytes:
    """uint8 [T,H,W,3] as an animated GIF (looping), the format of TensorBoard's video summaries."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(
        buf, format="GIF", save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0
    )
    return buf.getvalue()


class Tracker:
    """The run's tracker on the main process (every method is a no-op without one)."""

    def __init__(self, acc, cfg, run_dir: Path):
        self.acc, self.cfg, self.run_dir = acc, cfg, Path(run_dir)
        self.kind = cfg.train.get("report_to", "none") if acc.log_with else "none"

    @property
    def on(self) -> bool:
        return self.kind != "none" and self.acc.is_main_process

    def init_kwargs(self) -> dict:
        if self.kind == "wandb":
            return {
                "wandb": {
                    "dir": str(self.run_dir),
                    "mode": self.cfg.train.get("wandb_mode", "offline"),
                    "name": self.run_dir.name,
                    "resume": "allow",
                    "id": _wandb_id(self.run_dir),
                }
            }
        return {}

    def start(self) -> None:
        """Open the tracker and store the full resolved config. Every process calls it (accelerate
        opens trackers on the main process only)."""
        if self.kind == "none":
            return
        self.acc.init_trackers(PROJECT, config=flat_config(self.cfg), init_kwargs=self.init_kwargs())
        if not self.acc.is_main_process:
            return
        if self.kind == "tensorboard":  # W&B keeps the config itself (files/config.yaml of its run)
            yaml = OmegaConf.to_yaml(self.cfg, resolve=True)
            # markdown: indented by 4 spaces, TensorBoard's text dashboard shows it as code
            self.writer.add_text("config", "\n".join("    " + ln for ln in yaml.splitlines()), global_step=0)
            self.writer.flush()

    @property
    def writer(self):
        return self.acc.get_tracker("tensorboard", unwrap=True)

    @property
    def run(self):
        return self.acc.get_tracker("wandb", unwrap=True)

    def log(self, values: dict, step: int) -> None:
        if self.on:
            self.acc.log(
                {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}, step=step
            )

    def log_videos(self, videos: list[tuple[str, np.ndarray, Path]], fps: float, step: int) -> None:
        """videos: (name, uint8 frames [T,H,W,3], mp4 path) per validation video."""
        if not self.on or not videos:
            return
        if self.kind == "tensorboard":
            from tensorboard.compat.proto.summary_pb2 import Summary

            values = []
            for name, frames, _ in videos:
                _, H, W, C = frames.shape
                image = Summary.Image(height=H, width=W, colorspace=C, encoded_image_string=gif_bytes(frames, fps))
                values.append(Summary.Value(tag=f"validation/{name}", image=image))
            self.writer._get_file_writer().add_summary(Summary(value=values), global_step=step)
            self.writer.flush()
        else:
            import wandb

            self.run.log(
                {f"validation/{name}": wandb.Video(str(path), format="mp4") for name, _, path in videos}, step=step
            )

    def end(self) -> None:
        if self.kind != "none":
            self.acc.end_training()


def _wandb_id(run_dir: Path) -> str:
    """One W&B run id per run folder, kept in the folder: a resumed run continues its W&B run."""
    f = run_dir / "wandb_run_id.txt"
    if f.exists():
        return f.read_text().strip()
    import hashlib
    import time

    rid = hashlib.sha1(f"{run_dir.resolve()}{time.time_ns()}".encode()).hexdigest()[:12]
    f.write_text(rid + "\n")
    return rid
