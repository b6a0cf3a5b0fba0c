"""CI guard of the detection metrics: a detector trained on a reduced mini world (YOLO11n through
ultralytics' trainer, a few epochs) scores non-zero mAP through the evaluate path
(metrics.evaluate, det.reference=dataset) on real frames, and about zero on noise. If the
detection metrics ever regress to zero (or score noise as well as real frames), this fails."""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("ultralytics")

from data.synthetic import WORLDS, synthetic_clip  # noqa: E402

# a reduced target world: one or two near vehicles, slow, so a few epochs learn it
REDUCED = dataclasses.replace(WORLDS["nuscenes"], num_vehicles=(1, 3), depth=(5.0, 12.0), v_rel=(-2.0, 2.0))
EPOCHS = 12


@pytest.fixture(scope="module")
def trained_yolo(tmp_path_factory):
    from metrics.detectors.train_yolo import train_yolo

    work = tmp_path_factory.mktemp("mini_yolo")
    train = [synthetic_clip(s, 4, 64, 96, world=REDUCED) for s in range(24)]
    return train_yolo(
        work / "yolo.pt",
        train,
        train[:2],
        work_dir=work / "work",
        epochs=EPOCHS,
        imgsz=96,
        batch=8,
        mosaic=0.0,
        close_mosaic=0,
        extra={"val": False},
    )


def test_evaluate_gives_nonzero_map_on_real_frames_and_about_zero_on_noise(trained_yolo):
    from benchmark.sanity import detector_sanity
    from metrics.evaluate import load_config

    test = [synthetic_clip(1_000_000 + s, 4, 64, 96, world=REDUCED) for s in range(4)]  # seeds never trained on
    cfg = load_config("smoke")
    result = detector_sanity(
        test, {"yolo": {"name": "yolo11", "weights": str(trained_yolo), "imgsz": 96, "max_det": 50}}, cfg
    )["yolo"]
    assert result["real"] is not None and result["real"] > 5.0, result  # percent
    assert result["noise"] is not None and result["noise"] < 1.0, result
