"""SVD conditioning: identical to what StableVideoDiffusionPipeline computes at inference."""

import numpy as np
import pytest
import torch
from PIL import Image

from data.synthetic import synthetic_clip
from trainers.conditioning import SVDConditioner
from trainers.models import build_tiny_svd


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableVideoDiffusionPipeline

    return StableVideoDiffusionPipeline(**build_tiny_svd(seed=0))


def _frame0():
    frame = synthetic_clip(3, num_frames=1, height=64, width=96).frames[0]
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 127.5 - 1
    return frame, x


def test_clip_embedding_and_frame_latent_match_pipeline(pipe):
    frame, x = _frame0()
    cond = SVDConditioner(pipe.vae, pipe.image_encoder, pipe.feature_extractor, noise_aug=0.02)
    ours = cond.clip_embeds(x)
    theirs = pipe._encode_image(Image.fromarray(frame), "cpu", 1, False)
    assert ours.shape == theirs.shape == (1, 1, 32)
    assert torch.allclose(ours, theirs, atol=1e-4)

    lat = cond.cond_latents(x, torch.Generator().manual_seed(5))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    image = pipe.video_processor.preprocess(Image.fromarray(frame), height=64, width=96)
    ref = pipe._encode_vae_image(image + 0.02 * noise, "cpu", 1, False)
    assert torch.allclose(lat, ref, atol=1e-4)


def test_time_ids_match_pipeline(pipe):
    cond = SVDConditioner(
        pipe.vae, pipe.image_encoder, pipe.feature_extractor, fps=7, motion_bucket_id=127, noise_aug=0.02
    )
    # the pipeline passes fps - 1 to _get_add_time_ids
    ref = pipe._get_add_time_ids(7 - 1, 127, 0.02, torch.float32, 2, 1, False)
    assert torch.equal(cond.time_ids(2), ref)


def test_conditioning_dropout_rates():
    cond = SVDConditioner.__new__(SVDConditioner)
    cond.dropout = 0.1
    n = 20000
    e, l = cond.apply_dropout(torch.ones(n, 1, 4), torch.ones(n, 4, 2, 2), torch.Generator().manual_seed(0))
    e_drop, l_drop = (e[:, 0, 0] == 0), (l[:, 0, 0, 0] == 0)
    assert abs(e_drop.float().mean() - 0.2) < 0.02  # image embedding: p < 0.2
    assert abs(l_drop.float().mean() - 0.2) < 0.02  # frame latent: 0.1 <= p < 0.3
    assert abs((e_drop & l_drop).float().mean() - 0.1) < 0.02


def test_forward_shapes(pipe):
    clip = synthetic_clip(1, num_frames=4, height=64, width=96)
    frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2)[None].float() / 127.5 - 1
    cond = SVDConditioner(pipe.vae, pipe.image_encoder, pipe.feature_extractor)
    embeds, latents, ids = cond(frames, torch.Generator().manual_seed(0))
    assert embeds.shape == (1, 1, 32) and latents.shape == (1, 4, 4, 8, 12) and ids.shape == (1, 3)
    assert np.allclose(ids[0].tolist(), [6, 127, 0.02])
