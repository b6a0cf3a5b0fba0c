"""The preflight (benchmark/preflight.py): each wrong-format input refused with one line naming the
key, the file, what was expected and what was found; good stand-ins in the official formats pass;
hub ids checked through a stubbed hub client; `--dry-run` and `lsa-bench check` exit 2."""

from __future__ import annotations

import json
import shutil
import types

import pytest
import torch
from PIL import Image
from test_dinov2_hub import official_state_dict

from benchmark import preflight
from benchmark.preflight import PreflightFailed, Problem, refuse, run_preflight
from data.coco import COCO_NAMES

PAPER_DINO = {"model_type": "dinov2", "hidden_size": 768, "num_hidden_layers": 12, "patch_size": 14}
TINY_DINO = {"model_type": "dinov2", "hidden_size": 128, "num_hidden_layers": 2, "patch_size": 14}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Stand-ins in the official formats (tiny networks of the real classes) and wrong ones."""
    from test_metrics_dn_detr import make_reference, save_detrex_checkpoint

    from metrics.detectors.yolo import make_tiny_yolo
    from metrics.fid import make_random_inception_weights
    from metrics.fvd import make_tiny_i3d

    d = tmp_path_factory.mktemp("stand-ins")
    f = types.SimpleNamespace(dir=d)
    f.yolo = make_tiny_yolo(d / "good" / "yolo11x.pt")
    ckpt = torch.load(f.yolo, map_location="cpu", weights_only=False)  # the release's COCO class names
    ckpt["model"].names = dict(enumerate(COCO_NAMES))
    torch.save(ckpt, f.yolo)
    f.i3d = make_tiny_i3d(d / "good" / "i3d_torchscript.pt")
    f.inception = make_random_inception_weights(
        d / "good" / "weights-inception-2015-12-05-6726825d.pth", calib_images=1
    )
    f.dn_detr = save_detrex_checkpoint(make_reference(), d / "good" / "dn_detr_r50_50ep.pth")
    f.dino = d / "good" / "dinov2_vitb14_pretrain.pth"
    torch.save(official_state_dict(), f.dino)
    bad = d / "bad"
    bad.mkdir()
    for name in ("i3d_torchscript.pt", "weights-inception-2015-12-05-6726825d.pth", "dn_detr_r50_50ep.pth"):
        shutil.copy(f.yolo, bad / name)  # a YOLO checkpoint under each other network's name
    (bad / "yolo11x.pt").write_bytes(b"\x80\x04junk" * 100)
    (bad / "kitti").mkdir()
    f.bad = bad
    return f


def cfg_for(weights: dict, *, dino=None, svd=None, data=None, expect_dino=PAPER_DINO, variant=None, only=None) -> dict:
    """A resolved config whose check_paths name the metric weights, model.svd / model.dino and, with
    `data`, data.root (`only`: just these keys, to keep a test from reloading every network)."""
    local = ["metrics.fvd.weights", "metrics.fid.weights"] + [
        f"benchmark.eval.detectors.{d}.weights" for d in ("yolo", "dn_detr")
    ]
    return {
        "benchmark": {
            "check_paths": {
                "local": [k for k in local + (["data.root"] if data else []) if not only or k in only],
                "hub_or_local": [k for k in ("model.svd", "model.dino") if not only or k in only],
                "allow": ["tiny"],
                "expect": {"model.dino": expect_dino},
            },
            "eval": {
                "detectors": {
                    "yolo": {"name": "yolo11", "weights": str(weights["yolo"])},
                    "dn_detr": {"name": "dn_detr", "weights": str(weights["dn_detr"])},
                }
            },
        },
        "metrics": {
            "fvd": {"weights": str(weights["i3d"]), "format": "auto"},
            "fid": {"weights": str(weights["inception"])},
        },
        "model": {"svd": svd or "tiny", "dino": str(dino) if dino else "tiny", "variant": variant, "revision": None},
        "data": data or {"name": "synthetic", "root": None},
    }


def lines_of(cfg) -> list[str]:
    return run_preflight([("row", cfg)]).lines()


def one_line_for(lines: list[str], key: str) -> str:
    hits = [ln for ln in lines if ln.startswith(key + " ") or ln.startswith(key + " (")]
    assert len(hits) == 1, f"{key}: expected one line, found {hits} in\n" + "\n".join(lines)
    assert "expected" in hits[0] and "found" in hits[0] and "\n" not in hits[0]
    return hits[0]


def kitti_layout(root, scenes=("0000", "0019")):
    label = "0 1 Car 0 0 -1.5 100.0 120.0 200.0 220.0 1.5 1.6 3.9 1.0 1.5 10.0 -1.5\n"
    for s in scenes:
        (root / "training" / "label_02").mkdir(parents=True, exist_ok=True)
        (root / "training" / "label_02" / f"{s}.txt").write_text(label)
        (root / "training" / "image_02" / s).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 4)).save(root / "training" / "image_02" / s / "000000.png")
    return {
        "name": "kitti",
        "root": str(root),
        "split_dir": "training",
        "train": {"scenes": ["0000"]},
        "test": {"scenes": [19]},
    }


def nuscenes_layout(root, version="v1.0-trainval", n_files=30):
    tables = root / version
    tables.mkdir(parents=True)
    for t in preflight.NUSCENES_TABLES:
        (tables / f"{t}.json").write_text(json.dumps([{"token": "t0"}]))
    records = [{"token": f"s{i}", "filename": f"samples/CAM_FRONT/f{i}.jpg"} for i in range(n_files)]
    records.append({"token": "x", "filename": "samples/LIDAR_TOP/l.bin"})
    (tables / "sample_data.json").write_text(json.dumps(records))
    (root / "samples" / "CAM_FRONT").mkdir(parents=True)
    for r in records[:n_files]:
        (root / r["filename"]).write_bytes(b"jpg")
    return {"name": "nuscenes", "root": str(root), "version": version, "camera": "CAM_FRONT"}


# ------------------------------------------------------------------------- wrong formats refused


def test_each_wrong_format_is_refused_with_one_line(files):
    bad = files.bad
    weights = {
        "i3d": bad / "i3d_torchscript.pt",
        "inception": bad / "weights-inception-2015-12-05-6726825d.pth",
        "dn_detr": bad / "dn_detr_r50_50ep.pth",
        "yolo": bad / "yolo11x.pt",
    }
    data = {"name": "kitti", "root": str(bad / "kitti"), "split_dir": "training"}
    data.update(train={"scenes": ["0000"]}, test={"scenes": ["0019", "0020"]})
    lines = lines_of(cfg_for(weights, dino=files.dino, data=data))
    assert "I3D" in one_line_for(lines, "metrics.fvd.weights")
    assert "InceptionV3" in one_line_for(lines, "metrics.fid.weights")
    assert "dn_detr_r50_50ep.pth" in one_line_for(lines, "benchmark.eval.detectors.dn_detr.weights")
    assert "YOLO11" in one_line_for(lines, "benchmark.eval.detectors.yolo.weights")
    dino = one_line_for(lines, "model.dino")  # the format is right (converted), the size is not ViT-B/14
    assert "hidden_size': 768" in dino and "hidden_size': 128" in dino
    kitti = [ln for ln in lines if ln.startswith("data.root (data=kitti)")]
    assert len(kitti) == 2 and "['0000', '0019', '0020']" in kitti[0] and "image_02" in kitti[1]
    assert len(lines) == 7
    with pytest.raises(PreflightFailed, match="nothing was started") as e:
        refuse("I", run_preflight([("row", cfg_for(weights, dino=files.dino, data=data))]))
    assert isinstance(e.value, FileNotFoundError)


def test_stand_ins_in_the_official_formats_pass(files, tmp_path, tiny_cache):
    from trainers.models import save_tiny_svd

    svd = save_tiny_svd(tmp_path / "svd")
    weights = {"i3d": files.i3d, "inception": files.inception, "dn_detr": files.dn_detr, "yolo": files.yolo}
    kitti = kitti_layout(tmp_path / "kitti")
    assert lines_of(cfg_for(weights, dino=files.dino, svd=str(svd), data=kitti, expect_dino=TINY_DINO)) == []
    nus = nuscenes_layout(tmp_path / "nuscenes")
    assert lines_of(cfg_for(weights, data=nus, only=["data.root"])) == []
    # a transformers DINOv2 folder is checked by its config.json and its weights' keys and shapes
    from trainers.dinov2_hub import load_hub_dinov2

    load_hub_dinov2(files.dino).save_pretrained(tmp_path / "dino-hf")
    assert lines_of(cfg_for(weights, dino=tmp_path / "dino-hf", expect_dino=TINY_DINO, only=["model.dino"])) == []


def test_datasets_refused_by_name(files, tmp_path):
    weights = {"i3d": files.i3d, "inception": files.inception, "dn_detr": files.dn_detr, "yolo": files.yolo}
    nus = nuscenes_layout(tmp_path / "nuscenes")
    (tmp_path / "nuscenes" / "v1.0-trainval" / "scene.json").unlink()
    line = one_line_for(lines_of(cfg_for(weights, data=nus, only=["data.root"])), "data.root (data=nuscenes)")
    assert "scene.json" in line and "no such file" in line
    nus = nuscenes_layout(tmp_path / "nus2")
    for f in (tmp_path / "nus2" / "samples" / "CAM_FRONT").glob("*.jpg"):
        f.unlink()
    line = one_line_for(lines_of(cfg_for(weights, data=nus, only=["data.root"])), "data.root (data=nuscenes)")
    assert "CAM_FRONT files" in line and "absent" in line
    nus["version"] = "v1.0-mini"
    assert "no folder" in one_line_for(
        lines_of(cfg_for(weights, data=nus, only=["data.root"])), "data.root (data=nuscenes)"
    )
    kitti = kitti_layout(tmp_path / "kitti", scenes=("0000",))  # the test sequence 0019 is absent
    lines = lines_of(cfg_for(weights, data=kitti, only=["data.root"]))
    assert sum("missing ['0019']" in ln or "none for ['0019']" in ln for ln in lines) == 2


def test_svd_folder_checked_by_configs_variant_and_headers(files, tmp_path, tiny_cache):
    from trainers.models import save_tiny_svd

    weights = {"i3d": files.i3d, "inception": files.inception, "dn_detr": files.dn_detr, "yolo": files.yolo}
    svd = save_tiny_svd(tmp_path / "svd")
    lines = lines_of(cfg_for(weights, svd=str(svd), variant="fp16", only=["model.svd"]))
    assert len(lines) == 3 and all("weights of variant fp16" in ln for ln in lines)  # unet, vae, image_encoder
    assert "diffusion_pytorch_model.fp16.safetensors" in lines[0]

    broken = tmp_path / "broken"
    shutil.copytree(svd, broken)
    unet = broken / "unet" / "diffusion_pytorch_model.safetensors"
    unet.write_bytes(unet.read_bytes()[: unet.stat().st_size // 2])  # an interrupted download
    config = json.loads((broken / "vae" / "config.json").read_text())
    (broken / "vae" / "config.json").write_text(json.dumps({**config, "_class_name": "AutoencoderKL"}))
    lines = lines_of(cfg_for(weights, svd=str(broken), only=["model.svd"]))
    assert len(lines) == 2
    assert any("truncated" in ln and "unet" in ln for ln in lines)
    assert any("AutoencoderKLTemporalDecoder" in ln and "found AutoencoderKL" in ln for ln in lines)

    other = tmp_path / "other"  # right files, wrong architecture: the header's shapes do not fit the config
    shutil.copytree(svd, other)
    config = json.loads((other / "unet" / "config.json").read_text())
    (other / "unet" / "config.json").write_text(json.dumps({**config, "cross_attention_dim": 64}))
    line = one_line_for(lines_of(cfg_for(weights, svd=str(other), only=["model.svd"])), "model.svd")
    assert "other shapes" in line

    (other / "model_index.json").unlink()
    assert "model_index.json" in one_line_for(
        lines_of(cfg_for(weights, svd=str(other), only=["model.svd"])), "model.svd"
    )


# ------------------------------------------------------------------------------------- hub ids


class FakeHub:
    def __init__(self, files=None, gated=False, access=True, error=None, cached=None):
        self._files, self.gated, self.access, self.error, self.cached = files or [], gated, access, error, cached

    def cached_snapshot(self, repo_id, revision):
        return self.cached

    def files(self, repo_id, revision):
        if self.error:
            raise self.error
        return self._files, self.gated

    def auth_check(self, repo_id):
        from huggingface_hub.errors import GatedRepoError

        if not self.access:
            raise GatedRepoError("no access", response=types.SimpleNamespace(headers={}, status_code=403, request=None))


SVD_XT = "stabilityai/stable-video-diffusion-img2vid-xt"
SVD_FILES = [
    "model_index.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.fp16.safetensors",
    "image_encoder/config.json",
    "image_encoder/model.fp16.safetensors",
    "feature_extractor/preprocessor_config.json",
    "scheduler/scheduler_config.json",
]


def hub_lines(monkeypatch, files, hub, offline=False, variant="fp16"):
    monkeypatch.setattr(preflight, "HUB", hub)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1") if offline else monkeypatch.delenv(var, raising=False)
    weights = {"i3d": files.i3d, "inception": files.inception, "dn_detr": files.dn_detr, "yolo": files.yolo}
    return lines_of(cfg_for(weights, svd=SVD_XT, variant=variant, only=["model.svd"]))


def test_hub_ids(monkeypatch, files, tmp_path, tiny_cache):
    # reachable, public, complete: fine
    assert hub_lines(monkeypatch, files, FakeHub(files=SVD_FILES)) == []
    # gated without access: named with what the user must do
    line = one_line_for(
        hub_lines(monkeypatch, files, FakeHub(files=SVD_FILES, gated="auto", access=False)), "model.svd"
    )
    assert "accept the licence at https://huggingface.co/" + SVD_XT in line and "HF_TOKEN" in line
    # a file of the variant is absent in the repo
    line = one_line_for(hub_lines(monkeypatch, files, FakeHub(files=SVD_FILES[:-3] + SVD_FILES[-2:])), "model.svd")
    assert "image_encoder/model.fp16.safetensors" in line and "missing in the repo" in line
    # not reachable (no route from a compute node)
    line = one_line_for(hub_lines(monkeypatch, files, FakeHub(error=ConnectionError("no route to host"))), "model.svd")
    assert "not reachable" in line and f"hf download {SVD_XT}" in line
    # offline and not cached: how to pre-download into the weights folder, with `hf`
    line = one_line_for(hub_lines(monkeypatch, files, FakeHub(), offline=True), "model.svd")
    assert f"hf download {SVD_XT} --local-dir $LSA_BENCH_WEIGHTS/stable-video-diffusion-img2vid-xt" in line
    assert "huggingface-cli" not in line
    # cached: the snapshot folder is checked like a local folder
    from trainers.models import save_tiny_svd

    snap = save_tiny_svd(tmp_path / "snap")
    assert hub_lines(monkeypatch, files, FakeHub(cached=snap), offline=True, variant=None) == []


def test_problem_line_format():
    p = Problem("metrics.fid.weights", "/w/x.pth", "an InceptionV3", "a YOLO")
    assert p.line() == "metrics.fid.weights = /w/x.pth: expected an InceptionV3; found a YOLO"


# ------------------------------------------------------------------ the commands, end to end


def test_dry_run_and_check_exit_2_with_wrong_stand_ins(files, tmp_path, monkeypatch, capsys):
    from benchmark.commands import main as lsa_bench
    from benchmark.run import main as run_main

    weights = tmp_path / "weights"
    shutil.copytree(files.bad, weights)
    monkeypatch.setenv("LSA_BENCH_WEIGHTS", str(weights))
    monkeypatch.setenv("LSA_KITTI_ROOT", str(weights / "kitti"))
    monkeypatch.setenv("LSA_NUSCENES_ROOT", str(tmp_path / "nuscenes"))
    nuscenes_layout(tmp_path / "nuscenes")
    over = [f"model.svd={files.dir / 'no-svd'}", f"model.dino={files.dino}"]
    assert run_main(["table=I", "profile=paper", "--dry-run", f"store={tmp_path / 'runs'}", *over]) == 2
    out, err = capsys.readouterr()
    assert "pending" in out and "a real run would refuse to start" in err
    shown = [ln for ln in out.splitlines() if ln.startswith("preflight: ")]
    for key in ("metrics.fvd.weights", "metrics.fid.weights", "detectors.dn_detr.weights", "model.svd", "model.dino"):
        assert any(key in ln for ln in shown), key
    assert any(ln.startswith("preflight: data.root (data=kitti)") for ln in shown)
    assert not any("data=nuscenes" in ln for ln in shown)  # the nuScenes stand-in is in the right format
    assert not (tmp_path / "runs").exists()

    assert lsa_bench(["check", "table=III", "profile=paper", "rows=svd_finetuned", *over]) == 2
    out, err = capsys.readouterr()
    assert "ok  data.root (data=nuscenes)" in out and "preflight: metrics.fvd.weights" in out


def test_header_comparison_knows_legacy_names_and_skipped_buffers():
    from benchmark.preflight import compare_shapes

    expected = {"encoder.layer.0.attention.q_proj.weight": (4, 4), "x.weight": (2,)}
    found = {  # transformers 4 names (the hub's dinov2-base files) and a buffer old CLIP files carry
        "encoder.layer.0.attention.attention.query.weight": (4, 4),
        "x.weight": (2,),
        "vision_model.embeddings.position_ids": (1, 257),
    }
    assert compare_shapes(found, expected) is None
    assert "other shapes" in compare_shapes({**found, "x.weight": (3,)}, expected)
    assert "missing keys" in compare_shapes({"x.weight": (2,)}, expected)
    assert "unexpected keys" in compare_shapes({**found, "y.bias": (1,)}, expected)
