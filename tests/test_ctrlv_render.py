"""Ctrl-V box frames: identity colours, drawing, and reading boxes back from hand-made boxes."""

import numpy as np
import pytest
import torch

from trainers.ctrlv.render import Renderer, encode_box_latents, identity_slots, to_model_range
from trainers.ctrlv.train import load_ctrlv_config

H, W = 64, 96


@pytest.fixture(scope="module")
def cfg():
    return load_ctrlv_config(["model=tiny"])


@pytest.fixture(scope="module")
def renderer(cfg):
    return Renderer.from_cfg(cfg.ctrlv)


def _as_dict(read, slots_wanted):
    return {
        int(s): (b, int(lab))
        for s, b, lab in zip(read["slots"], read["boxes"], read["labels"])
        if int(s) in slots_wanted
    }


def test_identity_slots_priority_frames_first_and_unknown_ids():
    tracks = [np.array([7, 3]), np.array([3, 9, -1]), np.array([5, 7]), np.array([9, 5, -1])]
    # time order: 7->0, 3->1, 9->2, (-1 in frame 1)->3, 5->4, (-1 in frame 3)->5
    assert [s.tolist() for s in identity_slots(tracks)] == [[0, 1], [1, 2, 3], [4, 0], [2, 4, 5]]
    # given frames 0 and 3 (a *-to-1 variant) are numbered first: 7, 3, 9, 5, -1, then frame 1's -1
    assert [s.tolist() for s in identity_slots(tracks, [0, 3])] == [[0, 1], [1, 2, 5], [3, 0], [2, 3, 4]]


def test_palette_colours_are_unambiguous(renderer):
    fill = renderer.fill
    d = np.linalg.norm(fill[:, None] - fill[None], axis=-1) + np.eye(len(fill)) * 1e9
    assert d.min() > 2 * renderer.colour_tolerance  # nearest-colour matching cannot confuse two tracks
    greys = np.array(sorted(set(renderer.class_grey.values()) | {renderer.other_grey, 0}))[:, None].repeat(3, 1)
    assert np.linalg.norm(greys[:, None] - fill[None], axis=-1).min() > renderer.colour_tolerance


def test_render_draws_filled_identity_colour_and_class_outline(renderer):
    frame = renderer.render_frame([[10, 20, 40, 50]], [2], [3], (H, W))  # a car, slot 3
    assert frame.dtype == np.uint8 and frame.shape == (H, W, 3)
    assert (frame[:20] == 0).all() and (frame[:, 40:] == 0).all()  # black canvas outside
    assert (frame[30, 25] == renderer.fill[3]).all()  # fill: 0.75 x identity colour
    assert (frame[20, 25] == renderer.class_grey[2]).all()  # 2-px outline in the car grey
    assert (frame[21, 25] == renderer.class_grey[2]).all() and (frame[22, 25] == renderer.fill[3]).all()


def test_render_then_read_back_hand_made_boxes(renderer):
    boxes = np.array(
        [
            [5, 5, 40, 30],
            [50, 10, 90, 60],
            [60, 20, 75, 35],  # the third lies inside the second
            [20, 25, 45, 55],
        ],
        np.float32,
    )  # overlaps the first
    labels, slots = np.array([2, 7, 0, 5]), np.array([0, 1, 2, 7])
    read = renderer.read_frame(renderer.render_frame(boxes, labels, slots, (H, W)))
    got = _as_dict(read, set(slots.tolist()))
    assert set(got) == set(slots.tolist())
    for b, lab, s in zip(boxes, labels, slots):
        rb, rlab = got[int(s)]
        if s == 0:  # partly covered by the box drawn over it: its visible extent is read back
            assert np.abs(rb - b).max() <= 2 or (rb[3] <= 25 + 2 and np.abs(rb[:3] - b[:3]).max() <= 2)
        else:
            assert np.abs(rb - b).max() <= 1, (s, rb, b)
            assert rlab == lab


def test_read_back_without_outline_and_float_boxes(cfg):
    c = cfg.ctrlv.copy()
    c.render.outline_px = 0
    r = Renderer.from_cfg(c)
    boxes = np.array([[3.4, 7.6, 30.2, 40.5], [60.7, 2.2, 94.9, 20.4]], np.float32)
    read = r.read_frame(r.render_frame(boxes, [2, 7], [4, 11], (H, W)))
    got = _as_dict(read, {4, 11})
    for b, s in zip(boxes, (4, 11)):
        assert np.abs(got[s][0] - b).max() <= 1
        assert got[s][1] == -1  # no outline: no class read back


def test_read_back_is_robust_to_noise_and_stray_pixels(renderer):
    rng = np.random.default_rng(0)
    boxes = np.array([[8, 6, 44, 40], [52, 20, 88, 58]], np.float32)
    frame = renderer.render_frame(boxes, [2, 7], [0, 5], (H, W)).astype(np.float32)
    frame += rng.normal(0, 8, frame.shape)  # decoder-like noise
    for y, x in rng.integers(0, [H, W], size=(12, 2)):  # stray pixels of track 0's colour elsewhere
        if not (6 <= y < 40 and 8 <= x < 44):
            frame[y, x] = renderer.fill[0]
    read = renderer.read_frame(np.clip(frame, 0, 255).astype(np.uint8))
    got = _as_dict(read, {0, 5})
    assert np.abs(got[0][0] - boxes[0]).max() <= 2 and np.abs(got[5][0] - boxes[1]).max() <= 2
    assert got[0][1] == 2 and got[5][1] == 7


def test_empty_frames_and_tiny_boxes(renderer):
    frames = renderer.render([np.zeros((0, 4)), [[10, 10, 12, 12]]], [[], [2]], [[], [0]], (H, W))
    read = renderer.read(frames)
    assert len(read[0]["boxes"]) == 0
    assert len(read[1]["boxes"]) == 0  # 2x2 px is all outline: no identity pixels (documented limit)


def test_bad_render_config_names_the_key(cfg):
    c = cfg.ctrlv.copy()
    c.render.hue_step = 4  # not coprime with palette_size 12
    with pytest.raises(ValueError, match="ctrlv.render.hue_step"):
        Renderer.from_cfg(c)


def test_encode_box_latents_is_the_unscaled_vae_mode(tiny_cache, renderer):
    from trainers.models import load_svd

    vae = load_svd(load_ctrlv_config(["model=tiny"]).model).vae
    frames = renderer.render([[[8, 8, 40, 40]]] * 3, [[2]] * 3, [[1]] * 3, (H, W))
    x = to_model_range(frames)[None]  # [1,3,3,H,W]
    assert x.shape == (1, 3, 3, H, W) and x.min() >= -1 and x.max() <= 1
    z = encode_box_latents(vae, x)
    with torch.no_grad():
        ref = vae.encode(x[0]).latent_dist.mode()
    assert z.shape == (1, 3, 4, H // 8, W // 8)
    assert torch.equal(z[0], ref)  # mode, not a sample, and not scaled
    # chunking: the same latents up to the conv kernels' batch-size rounding (GroupNorm on the flat black
    # canvas amplifies it, hence the loose tolerance)
    torch.testing.assert_close(encode_box_latents(vae, x, chunk=2), z, atol=1e-2, rtol=0)


def test_real_kitti_boxes_render_and_read_back(shared_data, renderer):
    """Scene 0000 of the real KITTI Tracking labels (many overlapping tracks) at 375x1242: a box that no
    later-drawn box overlaps reads back within a pixel; a partly covered one within its true extent."""
    from data.kitti import read_label_file

    coco = {"Car": 2, "Van": 2, "Truck": 7, "Tram": 6, "Pedestrian": 0, "Person_sitting": 0, "Cyclist": 1}
    labels = [x for x in read_label_file(shared_data / "kitti_tracking/training/label_02/0000.txt") if x.type in coco]
    frames = sorted({x.frame for x in labels})[:3]
    per = [[x for x in labels if x.frame == f] for f in frames]
    boxes = [np.array([[x.x1, x.y1, x.x2, x.y2] for x in p], np.float32) for p in per]
    tracks = [np.array([x.track_id for x in p]) for p in per]
    slots = identity_slots(tracks)
    read = renderer.read(renderer.render(boxes, [[coco[x.type] for x in p] for p in per], slots, (375, 1242)))
    checked = 0
    for b, s, r in zip(boxes, slots, read):
        got = _as_dict(r, set(s.tolist()))
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        for i in range(len(b)):
            if (b[i, 2] - b[i, 0]) < 2 * renderer.outline_px + 2 or (b[i, 3] - b[i, 1]) < 2 * renderer.outline_px + 2:
                continue
            over = [
                k
                for k in range(len(b))
                if k != i
                and area[k] <= area[i]
                and not (b[k, 0] >= b[i, 2] or b[k, 2] <= b[i, 0] or b[k, 1] >= b[i, 3] or b[k, 3] <= b[i, 1])
            ]
            rb = got[int(s[i])][0]
            if over:
                assert (rb[:2] >= b[i, :2] - 1).all() and (rb[2:] <= b[i, 2:] + 1).all()
            else:
                assert np.abs(rb - b[i]).max() <= 1, (i, rb, b[i])
                checked += 1
    assert checked >= 3
