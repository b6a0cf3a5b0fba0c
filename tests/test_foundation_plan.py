"""Foundation parts (benchmark/foundation.py): hashing, dependencies, substitution, the mini profile."""

from __future__ import annotations

import copy

import pytest

from benchmark.foundation import describe, plan, references, resolve

NODE = {
    "dir": "fdn",
    "frames": {"height": 64, "width": 96, "clip_len": 8},
    "vae": {"steps": 10},
    "base_model": {"steps": 20},
    "yolo": {"epochs": 1},
    "dn_detr": {"steps": 5},
}


def _cfg(**top):
    detectors = {"yolo": {"weights": "foundation:yolo"}}
    return {"benchmark": {"foundation": copy.deepcopy(NODE), "eval": {"detectors": detectors}}, **top}


def test_named_parts_and_their_dependencies_in_order():
    parts = plan(_cfg(model={"svd": "foundation:base_model"}))
    assert list(parts) == ["vae", "base_model", "yolo"]  # dn_detr is not named: not planned
    assert str(parts["yolo"].path).endswith(".pt") and parts["vae"].path.parent.name == "fdn"
    assert references({"a": ["x", "foundation:vae"], "b": {"c": "foundation:yolo"}}) == {"vae", "yolo"}


def test_hash_follows_settings_and_the_parts_built_on():
    base = plan(_cfg(model={"svd": "foundation:base_model"}))
    cfg = _cfg(model={"svd": "foundation:base_model"})
    cfg["benchmark"]["foundation"]["vae"]["steps"] = 11
    changed = plan(cfg)
    assert changed["vae"].hash != base["vae"].hash
    assert changed["base_model"].hash != base["base_model"].hash  # built on the changed VAE
    assert changed["yolo"].hash == base["yolo"].hash


def test_substitution_puts_the_folders_into_the_config(tmp_path):
    cfg, parts = resolve(_cfg(model={"svd": "foundation:base_model"}))
    assert cfg["model"]["svd"] == str(parts["base_model"].path)
    assert cfg["benchmark"]["eval"]["detectors"]["yolo"]["weights"] == str(parts["yolo"].path)
    assert all("pending" in line for line in describe(parts))
    assert resolve({"model": {"svd": "tiny"}}) == ({"model": {"svd": "tiny"}}, {})


def test_unknown_or_unconfigured_part_is_an_error():
    with pytest.raises(ValueError, match="unknown part"):
        plan(_cfg(model={"svd": "foundation:clip"}))
    with pytest.raises(ValueError, match="no benchmark.foundation node"):
        plan({"model": {"svd": "foundation:vae"}})


def test_mini_profile_names_every_part():
    from benchmark.config import HydraResolver

    resolver = HydraResolver("mini")
    parts, cfg = resolver.foundation, resolver.base
    assert set(parts) == {"vae", "base_model", "yolo", "dn_detr"}
    assert cfg["model"]["svd"] == str(parts["base_model"].path)
    assert cfg["benchmark"]["eval"]["detectors"]["dn_detr"]["weights"] == str(parts["dn_detr"].path)
    assert cfg["benchmark"]["data_stand_in"] == {"nuscenes": "mini_nuscenes", "kitti": "mini_kitti"}
    assert HydraResolver("smoke").foundation == {}


def test_dry_run_lists_the_foundation_before_the_stages(capsys):
    from benchmark.run import main

    assert main(["table=III", "profile=mini", "--dry-run", "store=/nonexistent-store"]) == 0
    out = capsys.readouterr().out
    assert out.index("foundation base_model") < out.index("train")
    assert "pending" in out


def test_foundation_command_lists_the_parts(capsys, tmp_path):
    from benchmark.foundation import main

    assert main(["profile=mini", "--dry-run", f"benchmark.foundation.dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert all(f"foundation {name}" in out for name in ("vae", "base_model", "yolo", "dn_detr")), out
    assert not list(tmp_path.iterdir())  # a dry run builds nothing
