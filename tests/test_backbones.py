"""The backbone interface (trainers/backbones/): SVD behind it computes exactly what trainers/loop.py's
Trainer computes, so the objective and the loop can move onto the interface without a number moving."""

import pytest
import torch

from trainers.backbones import backbone_name
from trainers.config import load_config

COMMON = [
    "model=tiny",
    "data=synthetic",
    "data.train.num_clips=2",
    "data.clip_len=4",
    "schedule=joint",
    "train.max_steps=1",
    "loss.decode_frames=every_k:2",
]


def test_backbone_name():
    assert backbone_name(load_config(["model=tiny"]).model) == "svd"  # no key: SVD
    assert backbone_name(load_config(["model=ltx-tiny"]).model) == "ltx"
    with pytest.raises(ValueError, match="model.backbone='wan'"):
        backbone_name({"backbone": "wan"})


def test_svd_backbone_step_equals_the_trainers(tiny_cache, tmp_path):
    from trainers.backbone_trainer import BackboneTrainer
    from trainers.loop import Trainer

    cfg = load_config(COMMON + [f"train.out_dir={tmp_path / 'a'}"])
    ref = Trainer(cfg)
    batch = next(iter(ref.loader))
    loss_ref, terms_ref = ref.compute_loss(batch, torch.Generator().manual_seed(7))
    cfg_b = load_config(COMMON + [f"train.out_dir={tmp_path / 'b'}"])
    bb = BackboneTrainer(cfg_b)
    assert type(bb.backbone).__name__ == "SVDBackbone" and bb.export_name == "unet"
    loss_bb, terms_bb = bb.compute_loss(batch, torch.Generator().manual_seed(7))
    assert terms_ref.keys() == terms_bb.keys() and "loss_feat" in terms_ref
    assert terms_ref == terms_bb  # bit-identical: same draws in the same order
    loss_ref.backward()
    loss_bb.backward()
    for (n, p), (_, q) in zip(ref.unet.named_parameters(), bb.unet.named_parameters()):
        assert (p.grad is None) == (q.grad is None) and (p.grad is None or torch.equal(p.grad, q.grad)), n
