"""The training loop (accelerate): steps of an objective (trainers/objective.py), checkpoints, resume, export."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from data.atomic import TEMP_PREFIX, atomic_write_json, publish_dir, remove_dir, save_pretrained_atomic
from data.cli import InputError, MissingFile
from data.device import resolve_device, torch_dtype
from trainers import edm
from trainers.adapters import apply_adapter, merged_unet
from trainers.alignment import build_feature_loss
from trainers.conditioning import SVDConditioner
from trainers.decoder_speed import (
    block_checkpoint,
    set_channels_last,
    set_decoder_attention,
    set_decoder_block_checkpointing,
)
from trainers.ema import build_ema, ema_weights, trainable
from trainers.losses import DiffusionLoss, DinoFeatures, SemanticAlignmentLoss
from trainers.models import count_params, load_dino, load_svd
from trainers.objective import LSAObjective
from trainers.optim import build_lr_scheduler, build_optimizer
from trainers.tracking import Tracker, tracker_choice
from trainers.validation import Validator

STATE_FILE = "trainer_state.json"
log = logging.getLogger(__name__)


class EpochSampler(torch.utils.data.Sampler):
    """A fresh permutation per epoch from (seed, epoch): the order is known again after a resume.

    The method is deliberately not called `set_epoch`: accelerate's prepared loaders call
    `set_epoch(<times iterated>)`, which differs between an uninterrupted and a resumed run.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 1

    def use_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def step_generator(seed: int, micro_step: int, rank: int = 0) -> torch.Generator:
    """All randomness of one micro-step (sigma, noise, dropout, augmentation) from one seed, so a
    resumed run draws exactly what an uninterrupted run draws."""
    return torch.Generator().manual_seed((seed * 1_000_003 + micro_step) * 64 + rank)


def checkpoints(run_dir: Path) -> list[Path]:
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.iterdir() if p.name.startswith("step-") and (p / STATE_FILE).exists()),
        key=lambda p: int(p.name.split("-")[1]),
    )


def newest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


class Trainer:
    export_name = "unet"  # folder (under the run) the trained module is exported to; summary keys follow it
    validates = True  # can render validation videos with the SVD pipeline (train.validation_every)

    def __init__(self, cfg):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.cfg = cfg
        t = cfg.train
        self.run_dir = Path(t.out_dir)
        self.checkpoint_io: dict = {"saved": [], "loaded": []}  # seconds and bytes of each save / load (summary.json)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.switch_unet = self.adapter_switch_unet()
        trackers = tracker_choice(t)
        # accelerate keeps its mixed-precision state in a process-wide singleton: a second Trainer in
        # the same process (benchmark stages, tests) must be free to choose its own precision.
        # The distributed (PartialState) part is kept, so `accelerate launch` runs are unaffected.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()
        # device=auto on a machine without CUDA is the CPU: say so to accelerate, which otherwise runs
        # N independent copies (each its own "main process") under a distributed launcher
        on_cpu = resolve_device(t.device) == "cpu"
        self.acc = Accelerator(
            mixed_precision=t.mixed_precision,
            gradient_accumulation_steps=t.grad_accum,
            cpu=on_cpu,
            log_with=trackers,
            project_dir=str(self.run_dir),
        )
        set_seed(t.seed)
        torch.backends.cudnn.benchmark = bool(t.cudnn_benchmark)
        self.weight_dtype = torch_dtype(t.mixed_precision, "train.mixed_precision")

        # caches (tiny models, decoded frames) are filled by the main process before the others read
        # them: built concurrently, a folder could be published by a process that did not write all of
        # it (transformers' save_pretrained writes weights on rank 0 only)
        with self.acc.main_process_first():
            parts = self.load_parts()
            uses_feat = cfg.schedule.feat_from_epoch is not None and cfg.schedule.feat_from_epoch <= t.epochs
            dino = load_dino(cfg.model) if uses_feat else None
            from data.registry import build_dataset
            from data.torch_dataset import ClipTorchDataset, collate_clips

            self.dataset = ClipTorchDataset(build_dataset(cfg.data, "train"))
        self.parts = parts
        for m in (parts.vae, parts.image_encoder):
            freeze(m, self.acc.device, self.weight_dtype)
        self.dino, feat_loss = None, None
        if dino is not None:
            self.dino = freeze(dino, self.acc.device, self.weight_dtype)
            set_attention(self.dino, cfg.loss.dino_attention)
            if cfg.loss.decode_channels_last:
                set_channels_last(parts.vae.decoder)
            set_decoder_attention(parts.vae, cfg.loss.get("decode_attention", "sdpa"))
            set_decoder_block_checkpointing(parts.vae, block_checkpoint(cfg.loss))
            # LSA's L_feat (global | box | hybrid) or a representation alignment (repa | trd)
            feat_loss = build_feature_loss(
                cfg, DinoFeatures(self.dino, _size(cfg.loss.dino_size), cfg.loss.dino_mean, cfg.loss.dino_std)
            )
        self.conditioner = SVDConditioner(
            parts.vae, parts.image_encoder, parts.feature_extractor, **OmegaConf.to_container(cfg.cond)
        )
        sigmas = edm.scheduler_sigmas(parts.scheduler) if cfg.edm.sigma_dist == "uniform_index" else None
        self.diff_loss = DiffusionLoss(edm.SigmaSampler(cfg.edm.sigma_dist, cfg.edm.p_mean, cfg.edm.p_std, sigmas))
        self.objective = LSAObjective(self.diff_loss, feat_loss, parts.vae, parts.latent_scale, cfg.loss, cfg.schedule)

        unet = self.build_model(parts)
        compile_parts(cfg.train.compile, unet=unet, vae_decoder=parts.vae.decoder, dino=self.dino)
        params = [p for p in unet.parameters() if p.requires_grad]
        self.n_trainable = sum(p.numel() for p in params)
        optimizer = build_optimizer(params, t)

        if len(self.dataset) == 0:
            raise InputError(f"data={cfg.data.name}: the training split is empty (check data.root and the split)")
        self.sampler = EpochSampler(len(self.dataset), t.seed)
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=t.batch_size,
            sampler=self.sampler,
            collate_fn=collate_clips,
            num_workers=t.num_workers,
            drop_last=True,
        )
        if len(loader) == 0:
            raise InputError(
                f"train.batch_size={t.batch_size} is larger than the training split ({len(self.dataset)} clips)"
            )
        self.unet, self.optimizer, self.loader = self.acc.prepare(unet, optimizer, loader)
        # the schedule's horizon counts optimizer steps per epoch of this process's (prepared) loader
        lr_scheduler = build_lr_scheduler(optimizer, t, len(self.loader) // t.grad_accum, self.acc.num_processes)
        self.lr_scheduler = self.acc.prepare(lr_scheduler)
        self.ema = build_ema(trainable(self.acc.unwrap_model(self.unet)), t, self.acc.device)
        if self.ema is not None:  # saved in and restored from every checkpoint (custom_checkpoint_0.pkl)
            self.acc.register_for_checkpointing(self.ema)
        self.tracker = Tracker(self.acc, cfg, self.run_dir)
        self.validator = None
        if int(t.get("validation_every", 0) or 0) > 0 and self.acc.is_main_process:
            if self.validates:
                self.validator = Validator(cfg, parts, self.run_dir)
            else:
                self.say(
                    f"train.validation_every={t.validation_every}: {type(self).__name__} has no "
                    "validation videos; skipped",
                    logging.WARNING,
                )
        self.state = dict(global_step=0, micro_step=0, epoch=1, batch_in_epoch=0)
        self.loss_scale: dict = {}  # per LSA epoch: weighted terms at its first step and their means
        self.log_path = self.run_dir / "log.jsonl"

    def say(self, message: str, level: int = logging.INFO) -> None:
        """A progress or status line (logging), from the main process only."""
        if self.acc.is_main_process:
            log.log(level, message)

    @property
    def feat_loss(self) -> SemanticAlignmentLoss | None:
        """The objective's L_feat (None when this run never switches it on)."""
        return self.objective.L_feat

    # ---------------------------------------------------------------- what trains (hooks for subclasses)
    def load_parts(self):
        """The SVD parts (subclasses may swap in another U-Net folder, e.g. the Ctrl-V stages)."""
        return load_svd(self.cfg.model, unet_path=str(self.switch_unet) if self.switch_unet else None)

    def adapter_switch_unet(self) -> Path | None:
        """The exported U-Net of the `train.init_from` run when that run trained another adapter.

        Table IV's "LoRA (staged)" trains epoch 1 as the full U-Net (the epoch it shares with "SVD
        fine-tuned") and adds LoRA only for the LSA epoch (adapter.lora_epochs=lsa). accelerate's state
        of the parent (other parameters, their optimizer moments) cannot be loaded into the LoRA model,
        so this run starts from the parent's exported U-Net with a fresh optimizer, and takes over its
        loop position (epoch, steps)."""
        t = self.cfg.train
        own = newest_checkpoint(self.run_dir)
        if not t.init_from or t.resume not in ("auto", "never", None) or (t.resume == "auto" and own):
            return None
        run = Path(t.init_from)
        if (run / STATE_FILE).exists():  # a checkpoint folder: <run>/checkpoints/step-N
            run = run.parent.parent
        cfg_file = run / "config.yaml"
        if not cfg_file.exists():
            return None
        parent = (OmegaConf.load(cfg_file).get("adapter") or {}).get("name")
        if parent is None or parent == self.cfg.adapter.name:
            return None
        if not (run / "unet").is_dir():
            raise MissingFile(
                f"train.init_from={t.init_from}: trained with adapter={parent}, this run "
                f"with adapter={self.cfg.adapter.name}; that needs its exported U-Net "
                f"{run / 'unet'} (the run did not finish)"
            )
        return run / "unet"

    def build_model(self, parts) -> torch.nn.Module:
        """The module that trains (optimizer, checkpoints, export): here the SVD U-Net with its adapter."""
        unet = parts.unet
        if self.cfg.train.grad_checkpointing:
            unet.enable_gradient_checkpointing()
        unet = apply_adapter(unet, self.cfg.adapter)
        unet.train()
        return unet

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self):
        """Weights, optimizer, scheduler and RNG states (accelerate) + loop position, atomically.
        Every process takes part (each writes its own RNG state); the main one publishes the folder."""
        acc = self.acc
        folder = self.run_dir / "checkpoints"
        final = folder / f"step-{self.state['global_step']:08d}"
        tmp = folder / f"{TEMP_PREFIX}{final.name}"  # one name: every process writes into it
        t0 = time.perf_counter()
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps(self.state, indent=1))
            self.objective.save_extra(tmp)  # the REPA / TRD projector (trainers/alignment.py)
            publish_dir(tmp, final)
            size = sum(f.stat().st_size for f in final.rglob("*") if f.is_file())
            seconds = time.perf_counter() - t0
            self.checkpoint_io["saved"].append(dict(step=self.state["global_step"], seconds=seconds, bytes=size))
            self.say(f"checkpoint {final.name}: {size / 2**30:.2f} GiB in {seconds:.1f} s")
            for old in checkpoints(self.run_dir)[: -max(1, int(self.cfg.train.keep_checkpoints))]:
                remove_dir(old)
        acc.wait_for_everyone()

    def load_checkpoint(self, folder: Path):
        if self.ema is not None and not (Path(folder) / "custom_checkpoint_0.pkl").exists():
            raise InputError(
                f"{folder}: this checkpoint holds no EMA weights (its run had train.ema.enabled="
                "false); resume it with train.ema.enabled=false"
            )
        t0 = time.perf_counter()
        self.acc.load_state(str(folder))
        self.objective.load_extra(folder)  # the REPA / TRD projector, when the checkpoint has one
        if self.ema is not None:  # accelerate loads custom states onto the CPU
            self.ema.to(self.acc.device)
        self.state = json.loads((Path(folder) / STATE_FILE).read_text())
        self.checkpoint_io["loaded"].append(dict(folder=str(folder), seconds=time.perf_counter() - t0))
        self.say(f"resumed from {folder} (step {self.state['global_step']}, epoch {self.state['epoch']})")

    def maybe_resume(self):
        t = self.cfg.train
        own = newest_checkpoint(self.run_dir)
        if t.resume not in ("auto", "never", None):
            self.load_checkpoint(Path(t.resume))
        elif t.resume == "auto" and own is not None:
            self.load_checkpoint(own)
        elif t.init_from:
            src = Path(t.init_from)  # a checkpoint folder, or a run folder (its newest checkpoint)
            if not (src / STATE_FILE).exists():
                src = newest_checkpoint(src)
            if src is None:
                raise MissingFile(f"train.init_from={t.init_from}: no checkpoint ({STATE_FILE}) found there")
            if self.switch_unet is not None:  # weights came in through load_parts; only the loop position
                self.state = json.loads((src / STATE_FILE).read_text())
                self.say(
                    f"started from the U-Net exported at {self.switch_unet} (adapter "
                    f"{self.cfg.adapter.name} added, fresh optimizer), epoch {self.state['epoch']}"
                )
            else:
                self.load_checkpoint(src)
        self._truncate_log()

    def _truncate_log(self):
        """Drop log lines past the resumed step (written after the last checkpoint of a killed run).

        The log is appended line by line, so a kill can tear its last line: that line is dropped
        (saying so). Any other line that is not a JSON record is an error naming the file and line."""
        if not self.log_path.exists():
            return
        lines = self.log_path.read_text().split("\n")
        last = max((n for n, ln in enumerate(lines) if ln.strip()), default=-1)
        keep = []
        for n, ln in enumerate(lines):
            if not ln.strip():
                continue
            try:
                rec = json.loads(ln)
                step = rec["step"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                if n == last:
                    self.say(
                        f"{self.log_path}:{n + 1}: dropped a torn last line (the run was killed while "
                        f"writing it): {ln[:80]!r}",
                        logging.WARNING,
                    )
                    continue
                raise InputError(
                    f"{self.log_path}:{n + 1}: not a training log record ({type(e).__name__}: {e}); "
                    f"fix or delete that line to resume"
                ) from e
            if step <= self.state["global_step"]:
                keep.append(ln)
        self.log_path.write_text("".join(ln + "\n" for ln in keep))

    # ---------------------------------------------------------------- one step
    def compute_loss(self, batch, generator):
        cfg, acc = self.cfg, self.acc
        frames = batch["frames"].to(acc.device)  # [B,T,3,H,W] in [-1,1]
        B, T = frames.shape[:2]
        with torch.no_grad():
            lat = self.parts.vae.encode(frames.flatten(0, 1).to(self.weight_dtype)).latent_dist
            z0 = (lat.sample(generator=generator) * self.parts.latent_scale).float().view(B, T, *lat.mean.shape[1:])
        embeds, cond, time_ids = self.conditioner(frames.to(self.weight_dtype), generator, train=True)
        with acc.autocast(), sdpa_context(cfg.train.get("sdpa_backend", "auto")):
            loss, terms, sigma = self.objective(
                self.unet,
                z0,
                (cond, embeds, time_ids),
                frames,
                batch["boxes"],
                batch["index"],
                self.state["epoch"],
                generator,
            )
        self.check_finite(terms, sigma)
        return loss, {k: float(v.detach()) for k, v in terms.items()} | {"sigma": float(sigma.mean())}

    def check_finite(self, terms: dict, sigma: torch.Tensor) -> None:
        """Stop on a non-finite loss term. With several processes all of them stop at the same step,
        also those whose own terms are finite: they would otherwise wait in the gradient all-reduce
        for the stopped one until the communication times out."""
        acc = self.acc
        bad = next(((name, value) for name, value in terms.items() if not torch.isfinite(value)), None)
        ranks = [acc.process_index] if bad else []
        if acc.num_processes > 1:
            ranks = [
                i for i, f in enumerate(acc.gather(torch.tensor([bad is not None], device=acc.device)).tolist()) if f
            ]
        if not ranks:
            return
        where = (
            f"at step {self.state['global_step'] + 1} (epoch {self.state['epoch']}, sigma {sigma.tolist()}) "
            f"in {self.run_dir}; the run stops here, its last checkpoint is {newest_checkpoint(self.run_dir)}. "
            "Try mixed_precision=no or a lower train.lr."
        )
        what = f"non-finite {bad[0]} = {bad[1].item()}" if bad else f"non-finite loss on process(es) {ranks}"
        if bad and acc.num_processes > 1:
            what += f" (process {acc.process_index} of {acc.num_processes})"
        raise FloatingPointError(f"{what} {where}")

    # ---------------------------------------------------------------- the loop
    def train(self) -> Path:
        cfg, t, acc = self.cfg, self.cfg.train, self.acc
        self.maybe_resume()
        if acc.is_main_process:
            (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        self.tracker.start()
        max_steps = t.max_steps if t.max_steps is not None else math.inf
        steps_per_epoch = len(self.loader) // t.grad_accum
        total = min(max_steps, steps_per_epoch * t.epochs)
        bar = tqdm(
            total=total,
            initial=self.state["global_step"],
            desc=f"train {self.run_dir.name}",
            disable=not acc.is_main_process,
            dynamic_ncols=True,
        )
        start = time.time()
        while self.state["epoch"] <= t.epochs and self.state["global_step"] < max_steps:
            epoch = self.state["epoch"]
            self.sampler.use_epoch(epoch)
            from accelerate import skip_first_batches

            loader = (
                skip_first_batches(self.loader, self.state["batch_in_epoch"])
                if self.state["batch_in_epoch"]
                else self.loader
            )
            clips = []  # dataset indices of this optimizer step (this process)
            for batch in loader:
                clips += batch["index"].tolist()
                g = step_generator(t.seed, self.state["micro_step"], acc.process_index)
                with acc.accumulate(self.unet):
                    loss, terms = self.compute_loss(batch, g)
                    acc.backward(loss)
                    if acc.sync_gradients:
                        terms["grad_norm"] = self.clip_gradients()
                        terms["lr"] = self.lr_scheduler.get_last_lr()[0]  # the rate this step uses
                    self.optimizer.step()
                    self.objective.step_extra(acc, self.optimizer)  # the REPA / TRD projector
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                self.state["micro_step"] += 1
                self.state["batch_in_epoch"] += 1
                if not acc.sync_gradients:
                    continue
                self.state["global_step"] += 1
                if self.ema is not None:
                    self.ema.step(trainable(acc.unwrap_model(self.unet)))
                self._note_scale(self._log(terms, clips, epoch, start), epoch)
                if self.validator is not None and self.validator.due(self.state["global_step"]):
                    self.validate()
                clips = []
                bar.update(1)
                bar.set_postfix(epoch=epoch, **{k: f"{v:.4g}" for k, v in terms.items() if k.startswith("loss")})
                if self.state["global_step"] % t.checkpoint_every == 0:
                    self.save_checkpoint()
                if self.state["global_step"] >= max_steps:
                    break
            else:
                self.state.update(epoch=epoch + 1, batch_in_epoch=0)
                self.save_checkpoint()
                continue
            self.save_checkpoint()  # stopped by max_steps
        bar.close()
        self.tracker.end()
        finished = self.state["epoch"] > t.epochs or self.state["global_step"] >= max_steps
        if finished and acc.is_main_process:
            out, n_params = self.export(self.run_dir / self.export_name)
            ema = {}
            if self.ema is not None:
                ema_name = f"{self.export_name}_ema"
                ema[ema_name] = str(self.export(self.run_dir / ema_name, ema=True)[0])
            summary = dict(
                self.state,
                trainable_params=self.n_trainable,
                checkpoint=str(newest_checkpoint(self.run_dir)),
                checkpoint_io=self.checkpoint_io,
                **({"loss_scale": self.loss_scale} if self.loss_scale else {}),
                **{f"{self.export_name}_params": n_params, self.export_name: str(out)},
                **ema,
            )
            atomic_write_json(self.run_dir / "summary.json", summary)
        return self.run_dir

    def _note_scale(self, terms: dict, epoch: int) -> None:
        """The weighted terms 0.9 L_diff and lambda L_feat: printed at the first step of an LSA epoch
        this run trains, and their first-step values and running means kept for summary.json."""
        if "weighted_feat" not in terms:
            return
        sc = self.loss_scale.setdefault(str(epoch), {"first_step": None, "mean": {}, "steps": 0})
        pair = {k: terms[k] for k in ("weighted_diff", "weighted_feat")}
        if sc["first_step"] is None:
            sc["first_step"] = dict(pair, step=self.state["global_step"])
            ratio = pair["weighted_feat"] / pair["weighted_diff"] if pair["weighted_diff"] else math.inf
            self.say(
                f"LSA epoch {epoch}, step {self.state['global_step']}: weighted terms "
                f"{self.cfg.loss.diff_weight} L_diff = {pair['weighted_diff']:.4g}, "
                f"lambda L_feat = {pair['weighted_feat']:.4g} (ratio {ratio:.3g}; reduction "
                f"{self.cfg.loss.get('feat_reduction', 'mean')}, mask {self.cfg.loss.get('feat_mask', 'diff')})"
            )
        n = sc["steps"]
        sc["mean"] = {k: (sc["mean"].get(k, 0.0) * n + v) / (n + 1) for k, v in pair.items()}
        sc["steps"] = n + 1

    def _log(self, terms, clips, epoch, start):
        """One line per optimizer step: the loss terms averaged over the processes, and the clips
        every process trained on (in process order)."""
        acc = self.acc
        if acc.num_processes > 1:  # collectives: every process calls them
            names = [k for k, v in terms.items() if v is not None]
            mean = acc.reduce(torch.tensor([terms[k] for k in names], device=acc.device), reduction="mean")
            terms = terms | dict(zip(names, mean.tolist()))
            clips = acc.gather(torch.tensor(clips, device=acc.device)).tolist()
        if not acc.is_main_process:
            return terms
        w_diff, w_feat = self.objective.weights(epoch)
        rec = dict(
            step=self.state["global_step"],
            epoch=epoch,
            time=round(time.time() - start, 3),
            clips=clips,
            **terms,
            w_diff=w_diff,
            w_feat=w_feat,
        )
        with open(self.log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        self.tracker.log({k: v for k, v in rec.items() if k not in ("step", "clips")}, step=rec["step"])
        return terms

    def clip_gradients(self) -> float | None:
        """Clip to train.max_grad_norm (none when null) and return the gradient norm before clipping
        (None where the optimizer holds the gradients itself: adamw_offload). Without a limit the
        gradients are scaled by exactly 1."""
        t = self.cfg.train
        if t.get("optimizer", "adamw") == "adamw_offload":
            return None
        norm = self.acc.clip_grad_norm_(self.unet.parameters(), t.max_grad_norm or math.inf)
        return float(norm)

    def validate(self) -> list:
        """Validation videos of the current weights (the EMA weights when train.ema is on)."""
        unet = self.acc.unwrap_model(self.unet)
        step = self.state["global_step"]
        with ema_weights(self.ema, trainable(unet)):
            videos = self.validator(unet, step, self.acc.autocast)
        self.tracker.log_videos(videos, fps=float(self.cfg.cond.fps), step=step)
        self.say(f"validation videos of step {step}: {self.validator.out / f'step-{step:08d}'}")
        return videos

    def export(self, out: Path, ema: bool = False) -> tuple[Path, int]:
        """The trained U-Net (LoRA merged) as a diffusers folder, written atomically; (folder, #params).
        With `ema`, the EMA of its trained weights instead."""
        import copy

        unet = copy.deepcopy(self.acc.unwrap_model(self.unet))
        if ema:
            self.ema.copy_to(trainable(unet))
        unet = unet.float()
        unet = merged_unet(unet)
        out = save_pretrained_atomic(unet, out)
        return out, count_params(unet)


COMPILABLE = ("unet", "unet_blocks", "vae_decoder", "dino")
# the U-Net's repeated blocks (diffusers 0.42 declares no `_repeated_blocks` for the SVD U-Net, so
# `compile_repeated_blocks` does not apply to it): spatial and temporal transformer blocks, and the
# spatio-temporal resnets. Instances of one class share their compiled code (shapes permitting).
UNET_BLOCKS = ("BasicTransformerBlock", "TemporalBasicTransformerBlock", "SpatioTemporalResBlock")


def compile_parts(names, **modules) -> list[str]:
    """torch.compile the named parts in place (`nn.Module.compile`: state-dict keys, checkpoints and
    exports are unchanged). `train.compile` lists them; the first steps pay the compilation. A part
    this run does not have (DINOv2 in a diffusion-only or Ctrl-V stage) is left out, so one profile
    serves every stage. `unet_blocks` is regional compilation: each repeated block of the U-Net
    (UNET_BLOCKS) is compiled on its own, the code between them stays eager (shorter compilation
    than the whole U-Net, which gradient checkpointing breaks into pieces anyway). Returns the
    parts compiled."""
    names = list(names)
    bad = [n for n in names if n not in COMPILABLE]
    if bad:
        raise InputError(f"train.compile={names}: unknown part(s) {bad}; valid are {list(COMPILABLE)}")
    if "unet" in names and "unet_blocks" in names:
        raise InputError(
            f"train.compile={names}: unet (the whole U-Net) and unet_blocks (its blocks) exclude each other"
        )
    done = []
    for n in names:
        if n == "unet_blocks":
            if modules.get("unet") is None:
                continue
            compile_unet_blocks(modules["unet"])
        elif modules.get(n) is None:
            continue
        else:
            modules[n].compile()
        done.append(n)
    return done


def compile_unet_blocks(unet: torch.nn.Module) -> int:
    """Compile each repeated block of the U-Net in place (regional compilation); returns how many."""
    blocks = [m for m in unet.modules() if type(m).__name__ in UNET_BLOCKS]
    if not blocks:
        raise ValueError(f"train.compile=[unet_blocks]: no block of the classes {UNET_BLOCKS} in {type(unet).__name__}")
    for m in blocks:
        m.compile()
    return len(blocks)


SDPA_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")


def sdpa_context(backend: str):
    """A context restricting F.scaled_dot_product_attention to one kernel family (train.sdpa_backend):
    flash (FlashAttention-2, bf16/fp16), efficient (memory-efficient), cudnn, math (the reference
    matmuls). `auto` leaves PyTorch's choice. The backward pass uses the kernel of its forward."""
    import contextlib

    if backend in ("auto", None):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kinds = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }
    if backend not in kinds:
        raise ValueError(f"train.sdpa_backend={backend!r}: valid are {', '.join(SDPA_BACKENDS)}")
    return sdpa_kernel(kinds[backend])


def set_attention(model, implementation: str) -> None:
    """DINOv2's attention kernel (loss.dino_attention): sdpa (PyTorch's fused SDPA) or eager."""
    if implementation not in ("sdpa", "eager"):
        raise InputError(f"loss.dino_attention={implementation!r}: valid are 'sdpa', 'eager'")
    if hasattr(model, "set_attn_implementation"):  # transformers >= 4.56
        model.set_attn_implementation(implementation)
    else:
        model.config._attn_implementation = implementation


def freeze(module, device, dtype):
    """Frozen parts run in the mixed-precision dtype (kept as loaded when training in float32)."""
    module.requires_grad_(False).eval().to(device)
    return module.to(dtype=dtype) if dtype != torch.float32 else module


def _size(v):
    return v if v in ("auto", None) else list(v)


def train(cfg) -> Path:
    from trainers.backbones import backbone_name

    if backbone_name(cfg.model) != "svd":  # another backbone: the same loop through its interface
        from trainers.backbone_trainer import BackboneTrainer

        return BackboneTrainer(cfg).train()
    return Trainer(cfg).train()
