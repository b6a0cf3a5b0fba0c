"""The training loop of trainers/loop.py driven through the backbone interface (trainers/backbones/),
so the same LSA objective, schedules, adapters, checkpoints and resume train any backbone.

`model.backbone=ltx` runs here; SVD (no `model.backbone`, or `svd`) keeps trainers/loop.py's Trainer.
Only the set-up and one step differ from that Trainer: checkpoints, resume, logging and the loop
are inherited unchanged.
"""

from __future__ import annotations

import logging

import torch

from data.cli import ConfigKeyError, InputError
from data.device import resolve_device, torch_dtype
from trainers.adapters import apply_adapter
from trainers.alignment import build_feature_loss
from trainers.backbones import load_backbone
from trainers.decoder_speed import block_checkpoint, set_decoder_block_checkpointing
from trainers.loop import (
    EpochSampler,
    Trainer,
    _size,
    compile_parts,
    freeze,
    newest_checkpoint,
    sdpa_context,
    set_attention,
)
from trainers.losses import DinoFeatures
from trainers.models import load_dino
from trainers.objective import BackboneObjective
from trainers.optim import build_lr_scheduler, build_optimizer
from trainers.tracking import Tracker, tracker_choice


class BackboneTrainer(Trainer):
    def __init__(self, cfg):  # Trainer.__init__ with the backbone in place of the SVD parts
        from pathlib import Path

        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import set_seed

        self.cfg = cfg
        t = cfg.train
        self.run_dir = Path(t.out_dir)
        self.checkpoint_io: dict = {"saved": [], "loaded": []}  # seconds and bytes of each save / load (summary.json)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.switch_unet = None
        if t.init_from and not (t.resume == "auto" and newest_checkpoint(self.run_dir)):
            self._refuse_adapter_switch()
        if t.get("ema") is not None and bool(t.ema.get("enabled", False)):
            raise ConfigKeyError(
                f"train.ema.enabled=true: {type(self).__name__} ({cfg.model.get('backbone')}) does not keep an "
                "EMA yet; it is SVD-only (trainers/loop.py Trainer)"
            )
        trackers = tracker_choice(t)
        AcceleratorState._reset_state()
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

        with self.acc.main_process_first():
            self.backbone = load_backbone(cfg)
            uses_feat = cfg.schedule.feat_from_epoch is not None and cfg.schedule.feat_from_epoch <= t.epochs
            dino = load_dino(cfg.model) if uses_feat else None
            from data.registry import build_dataset
            from data.torch_dataset import ClipTorchDataset, collate_clips

            self.dataset = ClipTorchDataset(build_dataset(cfg.data, "train"))
        try:
            self.backbone.check_frames(int(cfg.data.clip_len), int(cfg.data.height), int(cfg.data.width))
        except ValueError as e:
            raise InputError(f"model={cfg.model.name}: {e}") from e
        for m in self.backbone.frozen():
            freeze(m, self.acc.device, self.weight_dtype)
        self.dino, feat_loss = None, None
        if dino is not None:
            self.dino = freeze(dino, self.acc.device, self.weight_dtype)
            set_attention(self.dino, cfg.loss.dino_attention)
            set_decoder_block_checkpointing(self.backbone.parts.vae, block_checkpoint(cfg.loss))
            feat_loss = build_feature_loss(
                cfg, DinoFeatures(self.dino, _size(cfg.loss.dino_size), cfg.loss.dino_mean, cfg.loss.dino_std)
            )
        # the LSA objective of trainers/objective.py, its noise draw and decode through the backbone
        self.objective = BackboneObjective(self.backbone, feat_loss, cfg.loss, cfg.schedule)

        model = self.build_model(self.backbone)
        compile_parts(
            [n for n in cfg.train.compile if n != "unet_blocks"],
            unet=model,
            vae_decoder=self.backbone.parts.vae.decoder,
            dino=self.dino,
        )
        params = [p for p in model.parameters() if p.requires_grad]
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
        # `self.unet` is the trained network whatever the backbone (the inherited loop reads that name)
        self.unet, self.optimizer, self.loader = self.acc.prepare(model, optimizer, loader)
        # the same schedule, tracker and validation switches as the SVD Trainer (trainers/loop.py)
        lr_scheduler = build_lr_scheduler(optimizer, t, len(self.loader) // t.grad_accum, self.acc.num_processes)
        self.lr_scheduler = self.acc.prepare(lr_scheduler)
        self.ema = None
        self.tracker = Tracker(self.acc, cfg, self.run_dir)
        self.validator = None
        if int(t.get("validation_every", 0) or 0) > 0:
            self.say(
                f"train.validation_every={t.validation_every}: {type(self).__name__} has no validation videos; skipped",
                logging.WARNING,
            )
        self.export_name = self.backbone.export_name
        self.state = dict(global_step=0, micro_step=0, epoch=1, batch_in_epoch=0)
        self.loss_scale: dict = {}
        self.log_path = self.run_dir / "log.jsonl"

    def _refuse_adapter_switch(self):
        """Starting a LoRA run from a full fine-tuning run (Table IV's LoRA staged) is SVD-only for now."""
        from pathlib import Path

        from omegaconf import OmegaConf

        run = Path(self.cfg.train.init_from)
        if (run / "trainer_state.json").exists():
            run = run.parent.parent
        parent = (
            (OmegaConf.load(run / "config.yaml").get("adapter") or {}).get("name")
            if (run / "config.yaml").exists()
            else None
        )
        if parent is not None and parent != self.cfg.adapter.name:
            raise InputError(
                f"train.init_from={self.cfg.train.init_from}: trained with adapter={parent}; switching "
                f"to adapter={self.cfg.adapter.name} is supported for SVD only"
            )

    def build_model(self, backbone) -> torch.nn.Module:
        net = backbone.trainable()
        if self.cfg.train.grad_checkpointing:
            net.enable_gradient_checkpointing()
        net = apply_adapter(net, self.cfg.adapter)
        net.train()
        return net

    def compute_loss(self, batch, generator):
        """One step of the objective (trainers/objective.py) on the backbone's latents and conditioning;
        the same terms and log as the SVD Trainer. The random draws come in the Trainer's order:
        latents, conditioning, noise."""
        cfg, acc, bb = self.cfg, self.acc, self.backbone
        frames = batch["frames"].to(acc.device)  # [B,T,3,H,W] in [-1,1]
        z0 = bb.encode(frames.to(self.weight_dtype), generator)
        cond = bb.condition(frames.to(self.weight_dtype), z0, generator, train=True)
        with acc.autocast(), sdpa_context(cfg.train.get("sdpa_backend", "auto")):
            loss, terms, sigma = self.objective(
                self.unet, z0, cond, frames, batch["boxes"], batch["index"], self.state["epoch"], generator
            )
        self.check_finite(terms, sigma)
        return loss, {k: float(v.detach()) for k, v in terms.items()} | {"sigma": float(sigma.mean())}

    def export(self, out):
        n = self.backbone.export(self.acc.unwrap_model(self.unet), out)
        return out, n


def train(cfg):
    return BackboneTrainer(cfg).train()
