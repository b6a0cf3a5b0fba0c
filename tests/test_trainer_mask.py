"""patch_mask (Eq. 4), hand-computed."""

import numpy as np
import pytest
import torch

from trainers.losses import patch_mask

# a 4x6 grid over a 40x60 image: every patch is 10x10 pixels


def test_global_is_all_ones_whatever_the_boxes():
    m = patch_mask([np.array([[0, 0, 60, 40]]), np.zeros((0, 4))], (4, 6), (40, 60), "global", 10)
    assert m.shape == (2, 4, 6) and torch.equal(m, torch.ones(2, 4, 6))


def test_hybrid_box_inside_one_patch_and_across_patches():
    boxes = [
        np.array([[12, 3, 18, 7]]),  # inside patch (row 0, col 1)
        np.array([[15, 15, 35, 22]]),
    ]  # rows 1-2, cols 1-3
    m = patch_mask(boxes, (4, 6), (40, 60), "hybrid", 10)
    expected0 = torch.ones(4, 6)
    expected0[0, 1] = 10
    expected1 = torch.ones(4, 6)
    expected1[1:3, 1:4] = 10
    assert torch.equal(m[0], expected0) and torch.equal(m[1], expected1)


def test_box_only_zero_outside():
    m = patch_mask([np.array([[12, 3, 18, 7]])], (4, 6), (40, 60), "box", 10)
    expected = torch.zeros(4, 6)
    expected[0, 1] = 10
    assert torch.equal(m[0], expected)


def test_box_on_patch_borders_does_not_spill():
    # exactly patches (1..2, 2..3): edges on borders touch the neighbours but do not overlap them
    m = patch_mask([np.array([[20, 10, 40, 30]])], (4, 6), (40, 60), "box", 1)
    expected = torch.zeros(4, 6)
    expected[1:3, 2:4] = 1
    assert torch.equal(m[0], expected)
    # a hair over the border reaches the next patch
    m = patch_mask([np.array([[20, 10, 40.01, 30]])], (4, 6), (40, 60), "box", 1)
    expected[1:3, 4] = 1
    assert torch.equal(m[0], expected)


def test_boxes_outside_frame_and_partially_outside():
    boxes = [np.array([[-30, -20, -5, -1], [70, 0, 90, 10], [55, 35, 80, 60]])]
    m = patch_mask(boxes, (4, 6), (40, 60), "hybrid", 10)
    expected = torch.ones(4, 6)
    expected[3, 5] = 10  # only the last box reaches in (bottom-right patch)
    assert torch.equal(m[0], expected)


def test_frames_without_boxes():
    m = patch_mask([np.zeros((0, 4)), []], (4, 6), (40, 60), "hybrid", 10)
    assert torch.equal(m, torch.ones(2, 4, 6))
    m = patch_mask([np.zeros((0, 4))], (4, 6), (40, 60), "box", 10)
    assert torch.equal(m, torch.zeros(1, 4, 6))


def test_non_integer_patch_size_matches_scaled_boxes():
    # 320x512 -> 23x37 DINOv2 grid (322x518 input, p=14): scaling boxes to the DINOv2 input and
    # dividing by 14 must give the same patches as our image-space edges
    H, W, gh, gw, p = 320, 512, 23, 37, 14
    rng = np.random.default_rng(0)
    for _ in range(50):
        x1, y1 = rng.uniform(0, W - 1), rng.uniform(0, H - 1)
        box = np.array([[x1, y1, rng.uniform(x1 + 0.5, W), rng.uniform(y1 + 0.5, H)]])
        m = patch_mask([box], (gh, gw), (H, W), "box", 1)[0]
        sx, sy = gw * p / W, gh * p / H
        bx = box[0] * np.array([sx, sy, sx, sy])
        ref = np.zeros((gh, gw))
        for u in range(gh):
            for v in range(gw):
                if bx[0] < (v + 1) * p and bx[2] > v * p and bx[1] < (u + 1) * p and bx[3] > u * p:
                    ref[u, v] = 1
        assert np.array_equal(m.numpy(), ref)


def test_unknown_variant():
    with pytest.raises(ValueError, match="loss.variant"):
        patch_mask([np.zeros((0, 4))], (2, 2), (10, 10), "boxes", 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (accelerate's loader puts boxes there)")
def test_boxes_on_the_gpu_give_the_cpu_mask():
    boxes = [torch.tensor([[10.0, 5.0, 40.0, 30.0]])] * 2
    want = patch_mask(boxes, (4, 6), (64, 96), "hybrid", 10.0)
    got = patch_mask([b.cuda() for b in boxes], (4, 6), (64, 96), "hybrid", 10.0)
    assert torch.equal(got, want)
