"""Detection metrics (mAP, mIoU, Ctrl-V's sweep) with scripted detections, the YOLO backend on an
untrained YOLO11n saved and reloaded by path, and the detector registry."""

import os

import numpy as np
import pytest
from omegaconf import OmegaConf

from metrics.detection import (
    DetectionAccumulator,
    DetProtocol,
    coco_map,
    ctrlv_ap,
    ctrlv_frame_counts,
    matched_ious,
    miou,
    plot_per_frame,
)
from metrics.detectors import Detections, FakeDetector, available_detectors, build_detector, register_detector

CAR, TRUCK, PERSON = 2, 7, 0


def D(boxes, scores=None, labels=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.ones(len(boxes)) if scores is None else scores
    labels = np.full(len(boxes), CAR) if labels is None else labels
    return Detections(boxes, scores, labels)


@pytest.fixture(scope="module")
def det_cfg():
    return OmegaConf.load(os.path.join(os.path.dirname(__file__), "..", "configs", "metrics", "default.yaml")).det


# ---------------------------------------------------------------- Detections / protocol filters


def test_detections_validate_lengths():
    with pytest.raises(ValueError, match="2 boxes, 1 scores"):
        Detections(np.zeros((2, 4)), np.zeros(1), np.zeros(2))
    d = Detections.empty()
    assert len(d) == 0 and d.boxes.shape == (0, 4) and d.labels.dtype == np.int64


def test_lsa_protocol_keeps_vehicles_of_76px(det_cfg):
    p = DetProtocol.from_cfg(det_cfg)
    d = D(
        [[0, 0, 80, 80], [0, 0, 75, 200], [0, 0, 100, 100], [0, 0, 100, 100], [0, 0, 90, 90]],
        scores=[0.9, 0.9, 0.9, 0.5, 0.7],
        labels=[CAR, CAR, PERSON, TRUCK, 5],
    )
    kept = p.select(d, (320, 512), min_conf=0.6)
    np.testing.assert_array_equal(kept.labels, [CAR, 5])  # narrow box, person, low score dropped
    assert p.name == "lsa" and p.class_aware and p.ref_conf == 0.6 and p.ap == "coco"


def test_ctrlv_protocol_is_class_agnostic_with_relative_size(det_cfg):
    cfg = OmegaConf.merge(det_cfg, {"protocol": "ctrlv"})
    p = DetProtocol.from_cfg(cfg)
    d = D([[0, 0, 41, 26], [0, 0, 40, 26], [0, 0, 50, 50]], labels=[CAR, TRUCK, TRUCK])
    kept = p.select(d, (320, 512))  # 8% of 512 = 40.96, of 320 = 25.6
    np.testing.assert_array_equal(kept.labels, [0, 0])
    assert len(kept) == 2 and p.max_frames == 16


def test_unknown_protocol_and_missing_keys(det_cfg):
    with pytest.raises(ValueError, match="det.protocol='nope'"):
        DetProtocol.from_cfg(OmegaConf.merge(det_cfg, {"protocol": "nope"}))
    bad = OmegaConf.to_container(det_cfg)
    del bad["protocols"]["lsa"]["ref_conf"]
    with pytest.raises(ValueError, match=r"det.protocols.lsa lacks the keys \['ref_conf'\]"):
        DetProtocol.from_cfg(bad)


# ---------------------------------------------------------------- mIoU


def test_miou_hand_computed_class_aware_and_agnostic():
    ref = D([[0, 0, 10, 10], [20, 20, 40, 40]], labels=[CAR, TRUCK])
    pred = D([[0, 0, 10, 5], [20, 20, 40, 40]], labels=[CAR, CAR])  # right box, wrong class for the truck
    np.testing.assert_allclose(matched_ious(ref, pred, class_aware=True), [0.5, 0.0])
    assert miou([ref], [pred], class_aware=True) == pytest.approx(0.25)
    assert miou([ref], [pred], class_aware=False) == pytest.approx(0.75)


def test_miou_uses_the_optimal_assignment_not_greedy():
    # IoU(A,p1)=90/110 is the best pair, but taking it leaves B with p2 (50/150);
    # the optimum is A-p2 (80/120) + B-p1 (80/120)
    A, B = [0, 0, 10, 10], [3, 0, 13, 10]
    p1, p2 = [1, 0, 11, 10], [-2, 0, 8, 10]
    ious = matched_ious(D([A, B]), D([p1, p2]))
    np.testing.assert_allclose(sorted(ious), [80 / 120, 80 / 120])
    assert miou([D([A, B])], [D([p1, p2])]) == pytest.approx(2 / 3)


def test_miou_unmatched_references_score_zero_and_none_without_references():
    ref = D([[0, 0, 10, 10], [50, 50, 60, 60], [100, 0, 110, 10]])
    pred = D([[0, 0, 10, 10]])
    assert miou([ref], [pred]) == pytest.approx(1 / 3)
    assert miou([ref, D([])], [pred, pred]) == pytest.approx(1 / 3)  # mean over reference boxes
    assert miou([D([])], [pred]) is None


# ---------------------------------------------------------------- COCO mAP vs pycocotools


def _random_frames(seed, n_frames=6):
    rng = np.random.default_rng(seed)
    refs, preds = [], []
    for _ in range(n_frames):
        n = int(rng.integers(0, 4))
        xy = rng.uniform(0, 300, (n, 2))
        wh = rng.uniform(20, 120, (n, 2))
        ref = Detections(np.hstack([xy, xy + wh]), np.ones(n), rng.choice([CAR, TRUCK], n))
        # predictions: jittered copies (some relabelled), plus false positives
        jit = ref.boxes + rng.normal(0, 6, ref.boxes.shape)
        fp = rng.uniform(0, 300, (int(rng.integers(0, 3)), 2))
        boxes = np.vstack([jit, np.hstack([fp, fp + 50])]) if len(fp) else jit
        labels = np.concatenate([np.where(rng.random(n) < 0.2, CAR, ref.labels), np.full(len(fp), CAR)])
        preds.append(Detections(boxes, rng.uniform(0.05, 1.0, len(boxes)), labels))
        refs.append(ref)
    return refs, preds


def _pycocotools_map(refs, preds):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, dets = [], [], []
    for i, (r, p) in enumerate(zip(refs, preds)):
        images.append({"id": i})
        for b, c in zip(r.boxes, r.labels):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": int(c),
                    "iscrowd": 0,
                    "bbox": [float(b[0]), float(b[1]), w, h],
                    "area": w * h,
                }
            )
        for b, s, c in zip(p.boxes, p.scores, p.labels):
            dets.append(
                {
                    "image_id": i,
                    "category_id": int(c),
                    "score": float(s),
                    "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                }
            )
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in range(80)]}
    gt.createIndex()
    ev = COCOeval(gt, gt.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats[0], ev.stats[1]


def test_coco_map_equals_pycocotools_cocoeval(capsys):
    refs, preds = _random_frames(0)
    ours = coco_map(refs, preds)
    theirs_map, theirs_50 = _pycocotools_map(refs, preds)
    assert ours["map"] == pytest.approx(theirs_map, abs=1e-6)
    assert ours["map_50"] == pytest.approx(theirs_50, abs=1e-6)
    assert 0.05 < ours["map"] < 0.95  # a case that tests something


def test_coco_map_perfect_and_undefined():
    refs = [D([[0, 0, 100, 100], [200, 0, 300, 90]], labels=[CAR, TRUCK])]
    assert coco_map(refs, refs)["map"] == pytest.approx(1.0)
    assert coco_map([D([])], [D([[0, 0, 10, 10]])])["map"] is None


# ---------------------------------------------------------------- Ctrl-V's confidence sweep


def test_ctrlv_ap_hand_computed():
    ref = D([[0, 0, 10, 10]], labels=[0])
    # IoU 0.6: a match for the thresholds 0.50 and 0.55 only (Ctrl-V counts IoU > thr)
    pred = D([[0, 0, 10, 6]], scores=[0.7], labels=[0])
    r = ctrlv_ap([ref], [pred])
    np.testing.assert_allclose(r["ap_per_iou"], [1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    assert r["map"] == pytest.approx(0.2)


def test_ctrlv_ap_duplicates_and_precision():
    ref = D([[0, 0, 10, 10]], labels=[0])
    pred = D([[0, 0, 10, 10], [0, 0, 10, 10]], scores=[0.9, 0.4], labels=[0, 0])
    # conf < 0.4: P = 1/2, R = 1; 0.4 <= conf < 0.9: P = 1, R = 1; Ctrl-V's area rule gives 1
    assert ctrlv_ap([ref], [pred])["map"] == pytest.approx(1.0)
    assert ctrlv_ap([D([])], [pred])["map"] is None


def test_ctrlv_frame_counts_follow_the_old_confusion_matrix():
    iou = np.array([[0.9, 0.7, 0.0], [0.8, 0.0, 0.0]])  # 2 references x 3 predictions (by score)
    # both references want prediction 0; it goes to reference 0 (best IoU), reference 1 is missed
    assert ctrlv_frame_counts(iou, 3, 0.5) == (1, 2, 1)
    assert ctrlv_frame_counts(iou, 1, 0.5) == (1, 0, 1)
    assert ctrlv_frame_counts(iou, 0, 0.5) == (0, 0, 2)
    assert ctrlv_frame_counts(iou, 3, 0.95) == (0, 0, 2)  # no match: predictions not counted as FP
    assert ctrlv_frame_counts(np.zeros((0, 2)), 2, 0.5) == (0, 2, 0)


# ---------------------------------------------------------------- accumulation and evaluate()


def _coded_frames(video_id, n_frames, h=64, w=96):
    """Frames that carry (video, frame) in pixel (0,0): a FakeDetector can script boxes per frame."""
    frames = np.full((n_frames, h, w, 3), 90, np.uint8)
    frames[:, 0, 0, 0] = video_id
    frames[:, 0, 0, 1] = np.arange(n_frames)
    return frames


def test_evaluate_with_fake_detector_per_frame_curves(tmp_path):
    """Generated frame j shows the car shifted right by 2j px: mIoU_j = (20-2j)/(20+2j) exactly."""
    from metrics.evaluate import evaluate, load_config

    T = 5

    def real_fn(frame):
        return D([[10, 10, 30, 30]], scores=[0.95])

    def gen_fn(frame):
        j = int(frame[0, 0, 1])
        return D([[10 + 2 * j, 10, 30 + 2 * j, 30]], scores=[0.8])

    class Router:  # real frames have red value 0, generated ones 1
        name = "fake"

        def detect(self, frames):
            return [(real_fn if f[0, 0, 0] == 0 else gen_fn)(f) for f in frames]

    cfg = load_config("default", ["metrics=[det]", "det.frame_size=null", "det.protocols.lsa.min_box_px=[8,8]"])
    real = [_coded_frames(0, T) for _ in range(2)]
    gen = [_coded_frames(1, T) for _ in range(2)]
    r = evaluate(real, gen, cfg, detector=Router(), progress=False)["det"]
    expected = [100 * (20 - 2 * j) / (20 + 2 * j) for j in range(T)]
    np.testing.assert_allclose(r["per_frame"]["mIoU"], expected, rtol=1e-6)
    assert r["mIoU"] == pytest.approx(np.mean(expected))
    assert r["per_frame"]["mAP"][0] == pytest.approx(100.0)
    assert r["n_videos"] == 2 and r["n_frames"] == 2 * T and r["protocol"] == "lsa"
    assert r["per_frame"]["n_ref_boxes"] == [2] * T
    png = plot_per_frame(r, tmp_path / "curves.png")
    assert png.stat().st_size > 1000


def test_ctrlv_protocol_keeps_first_frames():
    p = DetProtocol("ctrlv", None, False, 0.6, None, None, 3, 0.0, 0.6, "ctrlv")
    acc = DetectionAccumulator(p)
    box = D([[0, 0, 50, 50]], scores=[0.9])
    acc.add_video([box] * 5, [box] * 5, (64, 96))
    r = acc.compute()
    assert len(r["per_frame"]["mAP"]) == 3 and r["n_frames"] == 3
    assert r["mAP"] == pytest.approx(100.0) and r["mIoU"] == pytest.approx(100.0)


def test_dataset_reference_boxes_are_rescaled_to_the_detector_frame():
    from data.clip import Clip
    from metrics.evaluate import evaluate, load_config

    T = 3
    boxes = [np.array([[10, 10, 40, 30]], np.float32)] * T
    clips = [Clip(frames=_coded_frames(0, T), boxes=boxes, labels=[np.array([CAR])] * T) for _ in range(2)]
    # the detector sees frames at 128x192 (twice the video size): the dataset boxes must be doubled
    fake = FakeDetector(lambda f: D([[20, 20, 80, 60]], scores=[0.9]))
    cfg = load_config(
        "default",
        ["metrics=[det]", "det.reference=dataset", "det.frame_size=[128,192]", "det.protocols.lsa.min_box_px=[8,8]"],
    )
    r = evaluate(clips, [_coded_frames(1, T)] * 2, cfg, detector=fake, progress=False)["det"]
    assert r["mAP"] == pytest.approx(100.0) and r["mIoU"] == pytest.approx(100.0)
    assert fake.calls == 2 * T  # only the generated frames were detected
    assert r["reference"] == "dataset"


def test_dataset_reference_needs_boxes():
    from metrics.evaluate import evaluate, load_config

    cfg = load_config("default", ["metrics=[det]", "det.reference=dataset"])
    with pytest.raises(ValueError, match="det.reference=dataset needs Clips"):
        evaluate(
            [_coded_frames(0, 2)], [_coded_frames(1, 2)], cfg, detector=FakeDetector(lambda f: D([])), progress=False
        )


# ---------------------------------------------------------------- registry


def test_registry_builds_fake_and_custom_and_rejects_unknown():
    fake = build_detector({"name": "fake", "boxes": [[0, 0, 5, 5]], "scores": [0.5], "labels": [CAR]})
    out = fake.detect(np.zeros((2, 8, 8, 3), np.uint8))
    assert len(out) == 2 and out[1].labels.tolist() == [CAR]

    @register_detector("test_custom")
    def _build(cfg):
        return FakeDetector(lambda f: D([]))

    assert isinstance(build_detector({"name": "test_custom"}), FakeDetector)
    assert "yolo11" in available_detectors() and "dn_detr" in available_detectors()
    with pytest.raises(ValueError, match="det.detector.name='nope' is unknown"):
        build_detector({"name": "nope"})
    with pytest.raises(ValueError, match="uint8"):
        fake.detect(np.zeros((2, 8, 8, 3), np.float32))


# ---------------------------------------------------------------- YOLOv11 backend (untrained, by path)


@pytest.fixture(scope="module")
def tiny_yolo(tmp_path_factory):
    from metrics.detectors.yolo import make_tiny_yolo

    return make_tiny_yolo(tmp_path_factory.mktemp("yolo") / "yolo11n_random.pt")


@pytest.fixture(scope="module")
def road_frames():
    from data.synthetic import synthetic_clip

    return synthetic_clip(3, 4, 64, 96).frames


def test_yolo_offline_environment_is_set_by_the_project(tmp_path):
    """In a clean environment (conftest sets these variables too), importing the backend must set
    them before ultralytics reads them at its own import."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("YOLO_")}
    env["LSA_BENCH_CACHE"] = str(tmp_path)
    code = (
        "import os, metrics.detectors.yolo\n"
        "from ultralytics.utils import AUTOINSTALL, is_online\n"
        "print(os.environ['YOLO_OFFLINE'], AUTOINSTALL, is_online(), os.environ['YOLO_CONFIG_DIR'])"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.join(os.path.dirname(__file__), ".."),
    )
    assert r.returncode == 0, r.stderr
    offline, autoinstall, online, config_dir = r.stdout.split()
    assert (offline, autoinstall, online) == ("1", "False", "False")
    assert config_dir == str(tmp_path / "ultralytics") and os.access(config_dir, os.W_OK)


def test_yolo_backend_loads_by_path_and_detects(tiny_yolo, road_frames):
    det = build_detector(
        {"name": "yolo11", "weights": str(tiny_yolo), "imgsz": 128, "min_conf": 0.3, "batch_size": 3, "device": "cpu"}
    )
    out = det.detect(road_frames)
    assert len(out) == len(road_frames)
    assert all(isinstance(d, Detections) for d in out) and sum(len(d) for d in out) > 0
    for d in out:
        assert (d.scores >= 0.3).all() and ((0 <= d.labels) & (d.labels < 80)).all()
        assert (d.boxes[:, [0, 2]] <= 96 + 1e-3).all() and (d.boxes[:, [1, 3]] <= 64 + 1e-3).all()


def test_yolo_leaves_the_process_torch_thread_count_as_it_was(tiny_yolo, road_frames):
    """ultralytics' select_device sets torch's thread count process-wide (NUM_THREADS); a later
    stage in the same process must not run at another count than the one it started with."""
    import torch
    from ultralytics.utils import NUM_THREADS

    before = torch.get_num_threads()
    torch.set_num_threads(NUM_THREADS + 1)  # any count but ultralytics' own
    try:
        det = build_detector({"name": "yolo11", "weights": str(tiny_yolo), "imgsz": 128, "device": "cpu"})
        det.detect(road_frames[:1])
        assert torch.get_num_threads() == NUM_THREADS + 1
    finally:
        torch.set_num_threads(before)


def _same_boxes(a, b, atol=1e-2):
    """Equal as sets: near-tied scores may swap two boxes' order between batch sizes."""
    assert a.shape == b.shape
    if len(a):
        dist = np.abs(a[:, None, :] - b[None, :, :]).max(axis=2)
        assert dist.min(axis=1).max() <= atol and dist.min(axis=0).max() <= atol


def test_yolo_reads_rgb_and_batching_is_invisible(tiny_yolo, road_frames):
    from ultralytics import YOLO

    det = build_detector(
        {"name": "yolo11", "weights": str(tiny_yolo), "imgsz": 128, "min_conf": 0.3, "batch_size": 1, "device": "cpu"}
    )
    ours = det.detect(road_frames)
    raw = YOLO(str(tiny_yolo))
    bgr = raw.predict([f[..., ::-1].copy() for f in road_frames], imgsz=128, conf=0.3, verbose=False, device="cpu")
    rgb_as_bgr = raw.predict([f.copy() for f in road_frames], imgsz=128, conf=0.3, verbose=False, device="cpu")
    for d, r in zip(ours, bgr):
        _same_boxes(d.boxes, r.boxes.xyxy.numpy())
    assert any(
        len(d) != len(r.boxes) or not np.allclose(d.scores, r.boxes.conf.numpy(), atol=1e-4)
        for d, r in zip(ours, rgb_as_bgr)
    ), "the net should see a difference between RGB and BGR"
    batched = build_detector(
        {"name": "yolo11", "weights": str(tiny_yolo), "imgsz": 128, "min_conf": 0.3, "batch_size": 4, "device": "cpu"}
    ).detect(road_frames)
    for a, b in zip(ours, batched):
        _same_boxes(a.boxes, b.boxes)


def test_yolo_class_filter(tiny_yolo, road_frames):
    only_trucks = build_detector(
        {
            "name": "yolo11",
            "weights": str(tiny_yolo),
            "imgsz": 128,
            "min_conf": 0.05,
            "classes": [TRUCK],
            "device": "cpu",
        }
    ).detect(road_frames)
    assert sum(len(d) for d in only_trucks) == 0  # the tiny net only reports cars
    cars = build_detector(
        {
            "name": "yolo11",
            "weights": str(tiny_yolo),
            "imgsz": 128,
            "min_conf": 0.05,
            "classes": [CAR, TRUCK],
            "device": "cpu",
        }
    ).detect(road_frames)
    assert all((d.labels == CAR).all() for d in cars) and sum(len(d) for d in cars) > 0


def test_yolo_refuses_bare_names_and_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="bare name"):
        build_detector({"name": "yolo11", "weights": "yolo11x.pt"})
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ValueError, match="not an ultralytics YOLO detection checkpoint"):
        build_detector({"name": "yolo11", "weights": str(bad)})


def test_detections_on_generated_frames_are_saved_in_video_pixels(tmp_path):
    """evaluate(detections_dir=...) writes <name>.json per generated video, boxes scaled back from the
    detector's frame size to the video's (the benchmark's frame grid draws them)."""
    import json

    from metrics.evaluate import evaluate, load_config

    T = 2
    fake = FakeDetector(lambda f: D([[20, 20, 80, 60]], scores=[0.9]))  # in 128x192 detector pixels
    cfg = load_config("default", ["metrics=[det]", "det.frame_size=[128,192]", "det.protocols.lsa.min_box_px=[8,8]"])
    evaluate(
        [_coded_frames(0, T)] * 2,
        [_coded_frames(1, T)] * 2,
        cfg,
        names=["a", "b"],
        detector=fake,
        progress=False,
        detections_dir=tmp_path / "det",
    )
    saved = json.loads((tmp_path / "det" / "a.json").read_text())["frames"]
    assert len(saved) == T and (tmp_path / "det" / "b.json").exists()
    assert saved[0]["boxes"] == [[10.0, 10.0, 40.0, 30.0]]  # the 64x96 video's pixels
    assert saved[0]["scores"] == [pytest.approx(0.9)] and saved[0]["labels"] == [CAR]
