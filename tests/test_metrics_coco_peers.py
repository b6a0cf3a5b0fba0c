"""COCO mAP equal to the reference implementations: pycocotools (reading a COCO json written video by
video, as a user would) and faster-coco-eval, on cases that sit exactly on IoU thresholds, with score
ties, empty frames, frames with only references and frames with only predictions."""

import json

import numpy as np
import pytest

from metrics.detection import COCO_IOU_THRESHOLDS, DetectionAccumulator, DetProtocol, coco_map
from metrics.detectors import Detections

CAR, TRUCK = 2, 7


def D(boxes, scores=None, labels=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.ones(len(boxes)) if scores is None else scores
    labels = np.full(len(boxes), CAR) if labels is None else labels
    return Detections(boxes, scores, labels)


def _write_coco_json(refs, preds, folder):
    """The files a user would write: one image per frame, ids in the order given; [x, y, w, h] boxes."""
    images = [{"id": i, "width": 512, "height": 320} for i in range(len(refs))]
    labels = sorted({int(c) for d in (*refs, *preds) for c in d.labels})
    anns, dets = [], []
    for i, (r, p) in enumerate(zip(refs, preds)):
        for b, c in zip(r.boxes.tolist(), r.labels.tolist()):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": c,
                    "iscrowd": 0,
                    "bbox": [b[0], b[1], w, h],
                    "area": w * h,
                }
            )
        for b, s, c in zip(p.boxes.tolist(), p.scores.tolist(), p.labels.tolist()):
            dets.append({"image_id": i, "category_id": c, "score": s, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    gt_file, dt_file = folder / "gt.json", folder / "dt.json"
    gt_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": c} for c in labels]}))
    dt_file.write_text(json.dumps(dets))
    return gt_file, dt_file, dets


def _pycocotools(refs, preds, folder):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_file, dt_file, dets = _write_coco_json(refs, preds, folder)
    gt = COCO(str(gt_file))
    if not dets:  # COCO.loadRes cannot read an empty result list
        return None
    ev = COCOeval(gt, gt.loadRes(str(dt_file)), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats[:3]


def _faster_coco_eval(refs, preds, folder):
    fce = pytest.importorskip(
        "faster_coco_eval", reason="faster-coco-eval is a test dependency (pip install -e .[test])"
    )
    gt_file, dt_file, dets = _write_coco_json(refs, preds, folder)
    gt = fce.COCO(str(gt_file))
    if not dets:
        return None
    ev = fce.COCOeval_faster(gt, gt.loadRes(str(dt_file)), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats[:3]


def _assert_equal_to_peers(refs, preds, tmp_path, capsys=None):
    ours = coco_map(refs, preds)
    ours = [np.nan if ours[k] is None else ours[k] for k in ("map", "map_50", "map_75")]
    for peer in (_pycocotools, _faster_coco_eval):
        folder = tmp_path / peer.__name__
        folder.mkdir(exist_ok=True)
        theirs = peer(refs, preds, folder)
        theirs = np.where(np.asarray(theirs, float) < 0, np.nan, theirs)  # -1 = undefined
        np.testing.assert_allclose(ours, theirs, atol=1e-6, err_msg=peer.__name__)
    return ours


def test_thresholds_are_pycocotools_float64():
    assert COCO_IOU_THRESHOLDS.dtype == np.float64
    from pycocotools.cocoeval import Params

    np.testing.assert_array_equal(COCO_IOU_THRESHOLDS, Params(iouType="bbox").iouThrs)


def test_iou_exactly_on_a_threshold_is_a_match(tmp_path):
    """IoU([0,0,10,10], [0,0,10,6]) = 0.6 exactly: matched at .50, .55 and .60, so AP = 3/10."""
    refs, preds = [D([[0, 0, 10, 10]])], [D([[0, 0, 10, 6]], scores=[0.9])]
    ours = _assert_equal_to_peers(refs, preds, tmp_path)
    assert ours[0] == pytest.approx(0.3, abs=1e-12)


def test_thresholds_ties_empty_and_one_sided_frames(tmp_path):
    refs = [
        D([[0, 0, 10, 10], [20, 20, 40, 40]], labels=[CAR, TRUCK]),  # both classes
        D([]),  # empty frame
        D([[0, 0, 20, 20]]),  # only references
        D([]),  # only predictions
        D([[0, 0, 10, 10], [50, 0, 70, 20]]),
    ]
    preds = [
        D([[0, 0, 10, 6], [20, 20, 40, 35]], scores=[0.5, 0.5], labels=[CAR, TRUCK]),  # IoU .6 and .75
        D([]),
        D([]),
        D([[0, 0, 10, 10], [5, 5, 9, 9]], scores=[0.5, 0.7]),  # false positives, one tie
        D([[0, 0, 10, 10], [50, 0, 70, 15], [0, 0, 10, 8]], scores=[0.5, 0.5, 0.5]),
    ]  # ties, .75, .8
    ours = _assert_equal_to_peers(refs, preds, tmp_path)
    assert 0.05 < ours[0] < 0.95


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_frames_with_quantised_scores(tmp_path, seed):
    """Boxes on an integer grid (many IoUs on thresholds) and scores rounded to 0.1 (many ties)."""
    rng = np.random.default_rng(seed)
    refs, preds = [], []
    for _ in range(30):
        n = int(rng.integers(0, 5))
        xy = rng.integers(0, 200, (n, 2))
        wh = rng.choice([10, 20, 40], (n, 2))
        ref = D(np.hstack([xy, xy + wh]), labels=rng.choice([CAR, TRUCK], n))
        shift = rng.choice([0, 1, 2, 4], (n, 4))
        extra = int(rng.integers(0, 3))
        fp_xy = rng.integers(0, 200, (extra, 2))
        boxes = np.vstack([ref.boxes + shift, np.hstack([fp_xy, fp_xy + 20])])
        labels = np.concatenate([ref.labels, np.full(extra, CAR)])
        scores = np.round(rng.uniform(0.1, 1.0, len(boxes)), 1)
        preds.append(D(boxes, scores, labels))
        refs.append(ref)
    ours = _assert_equal_to_peers(refs, preds, tmp_path)
    assert 0.05 < ours[0] < 0.95


def test_no_prediction_at_all_and_no_reference_at_all():
    assert coco_map([D([[0, 0, 10, 10]])], [D([])]) == {"map": 0.0, "map_50": 0.0, "map_75": 0.0}
    assert coco_map([D([])], [D([[0, 0, 10, 10]])]) == {"map": None, "map_50": None, "map_75": None}


def test_accumulator_scores_frames_video_by_video(tmp_path):
    """Two videos of two frames with equal scores everywhere: the tie order (and so AP) is that of a
    COCO json numbered video by video (frame-first numbering gives another AP here)."""
    p = DetProtocol("lsa", None, True, 0.0, None, None, None, 0.0, 0.6, "coco")
    ref = D([[0, 0, 10, 10]])
    videos_ref = [[ref, D([])], [ref, ref]]
    videos_pred = [
        [D([[0, 0, 10, 10]], [0.5]), D([[0, 0, 5, 5]], [0.5])],
        [D([[0, 0, 10, 6]], [0.5]), D([[0, 0, 10, 10]], [0.5])],
    ]
    acc = DetectionAccumulator(p)
    for r, pr in zip(videos_ref, videos_pred):
        acc.add_video(r, pr, (64, 96))
    result = acc.compute()
    flat_ref = [d for v in videos_ref for d in v]
    flat_pred = [d for v in videos_pred for d in v]
    peers = _assert_equal_to_peers(flat_ref, flat_pred, tmp_path)
    assert result["mAP"] == pytest.approx(100 * peers[0], abs=1e-4)
    frame_first = coco_map(
        [videos_ref[v][j] for j in range(2) for v in range(2)], [videos_pred[v][j] for j in range(2) for v in range(2)]
    )
    assert frame_first["map"] != pytest.approx(peers[0])  # the order matters on this case
