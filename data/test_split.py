"""The saved, versioned list of test clips (`test_clips.json`).

Every method and every run must score the same first frames, so the test clips are chosen once,
deterministically, and written to a file that later runs read back instead of choosing again.
Selection: all non-overlapping windows of the test scenes (scene order, then time), and when there
are more than `num_clips`, `num_clips` of them evenly spaced over that list (so every scene keeps
its share; no random seed involved).
Two keys change this (docs/protocol.md, "Test clips"): `data.test.window_step` (null = non-overlapping,
the default; k = a window starts every k positions, so windows overlap when k < the clip span, as
Ctrl-V's KITTI test split with k = 1) and `data.test.select` (even, the default | first: the first
num_clips windows in scene and time order, as Ctrl-V's unshuffled evaluation loader).

File format (version 1):
    {"version": 1, "dataset": "kitti", "params": {"clip_len": 25, "stride": 1, ...},
     "num_candidates": 75,
     "clips": [{"dataset": "kitti", "scene": "0019", "first_frame": 0, "frame_ids": [0, 1, ...]}, ...]}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from data.atomic import atomic_write_json, read_versioned_json
from data.cache import config_hash
from data.cli import InputError
from data.sampling import ClipRef, clip_span, disjoint_refs, train_refs

TEST_CLIPS_VERSION = 1


SELECT_RULES = ("even", "first")


def select_evenly(candidates: Sequence[ClipRef], num_clips: int) -> list[ClipRef]:
    if num_clips < 1:
        raise InputError(f"data.test.num_clips must be >= 1, got {num_clips}")
    if len(candidates) <= num_clips:
        return list(candidates)
    idx = np.linspace(0, len(candidates) - 1, num_clips).round().astype(int)
    return [candidates[i] for i in idx]


def select_clips(candidates: Sequence[ClipRef], num_clips: int, rule: str = "even") -> list[ClipRef]:
    if rule not in SELECT_RULES:
        raise InputError(f"data.test.select={rule!r}: valid are {', '.join(SELECT_RULES)}")
    if rule == "first":
        if num_clips < 1:
            raise InputError(f"data.test.num_clips must be >= 1, got {num_clips}")
        return list(candidates[:num_clips])
    return select_evenly(candidates, num_clips)


def test_candidates(
    sequences: Mapping[str, Sequence[int]], clip_len: int, stride: int, window_step: int | None = None
) -> list[ClipRef]:
    """Every test window: non-overlapping (window_step None) or one starting every window_step positions."""
    if window_step is None:
        return disjoint_refs(sequences, clip_len, stride)
    if int(window_step) < 1:
        raise InputError(f"data.test.window_step must be null (non-overlapping) or >= 1, got {window_step}")
    return train_refs(sequences, clip_len, stride, int(window_step))


def default_clips_file(cache_dir: str | Path, dataset: str, params: Mapping) -> Path:
    """One file per dataset and selection parameters, so changing clip_len or num_clips starts a
    new list instead of clashing with the saved one."""
    return Path(cache_dir) / "test_clips" / f"{dataset}-{config_hash(dict(params))[:10]}.json"


def write_test_clips(
    path: str | Path, dataset: str, params: Mapping, clips: Sequence[ClipRef], num_candidates: int | None = None
) -> Path:
    doc = {
        "version": TEST_CLIPS_VERSION,
        "dataset": dataset,
        "params": dict(params),
        "num_candidates": num_candidates,
        "clips": [
            {"dataset": dataset, "scene": c.scene, "first_frame": c.first_frame, "frame_ids": list(c.frame_ids)}
            for c in clips
        ],
    }
    return atomic_write_json(Path(path), doc, sort_keys=False)


def read_test_clips(
    path: str | Path,
    dataset: str | None = None,
    params: Mapping | None = None,
    sequences: Mapping[str, Sequence[int]] | None = None,
    overlap_ok: bool = False,
) -> list[ClipRef]:
    """Read and check a test_clips.json; every problem names the file (and the clip index)."""
    path = Path(path)
    doc = read_versioned_json(path, TEST_CLIPS_VERSION, "test clip list")
    if dataset is not None and doc.get("dataset") != dataset:
        raise InputError(
            f"{path}: lists clips of dataset {doc.get('dataset')!r}, not {dataset!r} "
            "(set data.test.clips_file to another file)"
        )
    for k, v in (params or {}).items():
        if doc.get("params", {}).get(k) != v:
            raise InputError(
                f"{path}: was made with {k}={doc.get('params', {}).get(k)!r} but the config "
                f"has {k}={v!r}; delete the file or set data.test.clips_file elsewhere"
            )
    clips = []
    for k, c in enumerate(doc.get("clips", [])):
        where = f"{path}: clips[{k}]"
        try:
            ref = ClipRef(str(c["scene"]), tuple(int(f) for f in c["frame_ids"]))
            first = int(c["first_frame"])
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{where}: needs scene, first_frame and integer frame_ids ({e})") from e
        if not ref.frame_ids or first != ref.first_frame:
            raise InputError(f"{where}: first_frame {first} is not frame_ids[0]")
        if params and "clip_len" in params and len(ref.frame_ids) != params["clip_len"]:
            raise InputError(f"{where}: {len(ref.frame_ids)} frames, data.clip_len is {params['clip_len']}")
        if sequences is not None:
            if ref.scene not in sequences:
                raise InputError(f"{where}: scene {ref.scene!r} is not among the test scenes {sorted(sequences)[:10]}")
            absent = set(ref.frame_ids) - set(sequences[ref.scene])
            if absent:
                raise InputError(f"{where}: scene {ref.scene} has no frames {sorted(absent)[:5]}")
        clips.append(ref)
    if not overlap_ok and doc.get("params", {}).get("window_step") is None:
        _check_disjoint(clips, path)
    return clips


def _check_disjoint(clips: Sequence[ClipRef], path: Path) -> None:
    by_scene: dict[str, list[tuple[int, int, int]]] = {}
    for k, c in enumerate(clips):
        by_scene.setdefault(c.scene, []).append((min(c.frame_ids), max(c.frame_ids), k))
    for scene, spans in by_scene.items():
        spans.sort()
        for (_a0, a1, ka), (b0, _b1, kb) in zip(spans, spans[1:]):
            if b0 <= a1:
                raise InputError(
                    f"{path}: clips[{ka}] and clips[{kb}] overlap in scene {scene} (test clips must not overlap)"
                )


def load_or_create_test_clips(
    dataset: str,
    sequences: Mapping[str, Sequence[int]],
    clip_len: int,
    stride: int,
    num_clips: int,
    clips_file: str | Path | None,
    cache_dir: str | Path,
    extra_params: Mapping | None = None,
    root: str | Path | None = None,
    window_step: int | None = None,
    select: str = "even",
) -> tuple[list[ClipRef], Path]:
    """The test clips of `sequences` (test scenes -> frame ids): read from the saved list when it
    exists, otherwise selected deterministically and saved. Returns (clips, file).

    The default file name hashes the parameters, the dataset root and the test scenes with their
    lengths (another root or another scene list gets its own file); the root is not checked on
    read, so a moved dataset keeps its list when data.test.clips_file points at it."""
    clip_span(clip_len, stride)  # validates clip_len / stride
    if select not in SELECT_RULES:
        raise InputError(f"data.test.select={select!r}: valid are {', '.join(SELECT_RULES)}")
    params = {"clip_len": int(clip_len), "stride": int(stride), "num_clips": int(num_clips), **dict(extra_params or {})}
    # only a departure from the default enters the params, so existing lists keep their file names
    if window_step is not None:
        params["window_step"] = int(window_step)
    if select != "even":
        params["select"] = str(select)
    name_key = {
        **params,
        "root": str(Path(root).resolve()) if root else None,
        "scenes": {str(k): len(v) for k, v in sorted(sequences.items())},
    }
    path = Path(clips_file) if clips_file else default_clips_file(cache_dir, dataset, name_key)
    if path.exists():
        return read_test_clips(path, dataset, params, sequences), path
    candidates = test_candidates(sequences, clip_len, stride, window_step)
    clips = select_clips(candidates, num_clips, select)
    write_test_clips(path, dataset, params, clips, num_candidates=len(candidates))
    return clips, path
