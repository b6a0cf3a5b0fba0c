"""Generation with the diffusers SVD pipeline: fixed seeds per clip, frame folders + mp4, resume."""

import numpy as np
from omegaconf import OmegaConf

from benchmark.generate import generate_videos, load_pipeline
from data.synthetic import synthetic_clip
from data.video_io import read_video
from trainers.config import load_config

GEN = OmegaConf.create(
    dict(
        height=64,
        width=96,
        num_frames=4,
        num_inference_steps=2,
        fps=7,
        motion_bucket_id=127,
        noise_aug_strength=0.02,
        min_guidance_scale=1.0,
        max_guidance_scale=3.0,
        decode_chunk_size=4,
        seed=0,
        save_mp4=True,
    )
)


def test_generate_is_seeded_per_clip_and_resumes(tiny_cache, tmp_path):
    pipe = load_pipeline(load_config(["model=tiny"]).model)
    firsts = [synthetic_clip(i, 1, 64, 96).frames[0] for i in range(2)]
    t = generate_videos(pipe, firsts, ["c0", "c1"], GEN, tmp_path / "a")
    assert t["generated"] == 2 and t["seconds"] > 0
    v0 = read_video(tmp_path / "a" / "frames" / "c0")
    assert v0.shape == (4, 64, 96, 3) and v0.dtype == np.uint8
    assert read_video(tmp_path / "a" / "videos" / "c0.mp4").shape == (4, 64, 96, 3)
    # same seeds -> same videos in another folder; a finished clip is not generated again
    import shutil

    shutil.rmtree(tmp_path / "a" / "frames" / "c1")
    again = generate_videos(pipe, firsts, ["c0", "c1"], GEN, tmp_path / "a")
    assert again["generated"] == 1
    generate_videos(pipe, firsts[:1], ["c0"], GEN, tmp_path / "b")
    assert np.array_equal(read_video(tmp_path / "b" / "frames" / "c0"), v0)
