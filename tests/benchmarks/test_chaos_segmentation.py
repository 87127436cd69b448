"""Tests of benchmarks/chaos_segmentation.py's scoring and report merging (no training: fake models)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from testutils import load_module


@pytest.fixture(scope="module")
def chaos():
    """The benchmark script imported as a module."""
    return load_module("benchmarks/chaos_segmentation.py")


class _FakeNet:
    """Segments every case as its liver plus a distant island; mirrored inference drops the island and
    overlap 0.5 misses one liver slice. Records the (overlap, mirror) of every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, bool]] = []

    def segment(self, image: np.ndarray, overlap: float = 0.25, mirror: bool = False) -> np.ndarray:
        self.calls.append((overlap, mirror))
        pred = np.zeros(image.shape[1:], dtype=np.uint8)
        pred[2 + (overlap == 0.5) : 8, 2:8, 2:8] = 1
        if not mirror:
            pred[12:14, 12:14, 12:14] = 1
        return pred


def test_evaluate_scores_after_and_before_postprocessing(chaos, tmp_path: Path) -> None:
    mask = np.zeros((16, 16, 16), dtype=np.uint8)
    mask[2:8, 2:8, 2:8] = 1
    nib.save(nib.Nifti1Image(mask, np.diag([4.0, 4.0, 4.0, 1.0])), str(tmp_path / "m.nii.gz"))
    case = {
        "case": "c1",
        "image": np.zeros((1, 16, 16, 16), dtype=np.float32),
        "mask": mask,
        "affine": np.diag([4.0, 4.0, 4.0, 1.0]),
        "mask_path": tmp_path / "m.nii.gz",
        "native_affine": np.diag([4.0, 4.0, 4.0, 1.0]),
        "native_shape": (16, 16, 16),
    }
    seg = tmp_path / "seg"
    kept = chaos.evaluate(_FakeNet(), [case], spacing=4.0, postprocess="largest", save_dir=seg)[0]
    raw = chaos.evaluate(_FakeNet(), [case], spacing=4.0, postprocess="none")[0]
    island = 2 * 216 / (216 + 8 + 216)  # Dice with the 8-voxel island counted as liver
    assert kept["dice"] == pytest.approx(1.0) and kept["dice_native"] == pytest.approx(1.0)
    assert kept["dice_raw"] == pytest.approx(island)
    assert raw["dice"] == pytest.approx(island) and raw["dice_raw"] == pytest.approx(island)
    saved = nib.load(str(seg / "c1.nii.gz"))  # the kept segmentation, native grid
    np.testing.assert_array_equal(np.asarray(saved.dataobj), mask)
    np.testing.assert_allclose(saved.affine, case["native_affine"])


def test_evaluate_scores_every_inference_variant_once(chaos, tmp_path: Path) -> None:
    mask = np.zeros((16, 16, 16), dtype=np.uint8)
    mask[2:8, 2:8, 2:8] = 1
    nib.save(nib.Nifti1Image(mask, np.eye(4)), str(tmp_path / "m.nii.gz"))
    case = {
        "case": "c1",
        "image": np.zeros((1, 16, 16, 16), dtype=np.float32),
        "mask": mask,
        "affine": np.eye(4),
        "mask_path": tmp_path / "m.nii.gz",
        "native_affine": np.eye(4),
        "native_shape": (16, 16, 16),
    }
    variants = {"run": (0.25, True), "plain": (0.25, False), "half": (0.5, False), "same": (0.25, True)}
    net = _FakeNet()
    row = chaos.evaluate(net, [case], spacing=1.0, postprocess="none", variants=variants)[0]
    assert sorted(net.calls) == [(0.25, False), (0.25, True), (0.5, False)]  # "same" is not recomputed
    assert row["dice"] == pytest.approx(1.0) and row["dice_raw"] == pytest.approx(1.0)  # the run's: mirrored
    island = 2 * 216 / (216 + 8 + 216)
    half = 2 * 180 / (188 + 216)  # one liver slice missed, the island kept
    assert row["dice_by_inference"] == pytest.approx({"plain": island, "half": half, "same": 1.0})


def test_inference_variants_and_overlap_option(chaos) -> None:
    v = chaos.inference_variants(0.609375, "mirror", roi=32, patch=8)
    assert v == {"run": (0.609375, True), "overlap 0.25": (0.25, False), "overlap 0.609": (0.609375, False)}
    assert chaos.resolve_overlap("auto", 32, 8) == pytest.approx(0.609375)  # stride 12 = 1.5 patches
    assert chaos.resolve_overlap("0.5", 32, 8) == 0.5
    for bad in ("1.0", "-0.1", "half"):
        with pytest.raises(SystemExit, match="--overlap"):
            chaos.resolve_overlap(bad, 32, 8)


def _run(chaos, models: dict[str, list[float]], **overrides) -> dict:
    """A tagged run's JSON: per model, its Dice in each of two folds."""
    per_fold = [
        {
            "fold": k,
            "test": [f"chaos_{k}"],
            "models": {
                m: {
                    "dice": d[k],
                    "dice_raw": d[k] - 0.1,
                    "hd95_mm": 10.0 * (k + 1),
                    "dice_native": d[k],
                    "steps": 5,
                }
                for m, d in models.items()
            },
        }
        for k in range(2)
    ]
    settings = {key: 1 for key in chaos.SETTINGS} | {"organ_scale": [0.35, 1.5]} | overrides
    return {
        "benchmark": "chaos_segmentation",
        "command": f"python benchmarks/chaos_segmentation.py --models {','.join(models)}",
        "machine": {"cpus": 2},
        "loadavg_start": [1.0],
        "loadavg_end": [1.0],
        "folds": 2,
        **settings,
        "pretraining": {"steps": 3} if "mrfound" in models else None,
        "target_mean_dice": 0.9,
        "per_fold": per_fold,
        "wall_s": 60.0 * len(models),
    }


def test_merge_combines_models_and_checks_the_target(chaos, tmp_path: Path) -> None:
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_text(json.dumps(_run(chaos, {"mrfound": [0.92, 0.9]})))
    b.write_text(json.dumps(_run(chaos, {"unet": [0.8, 0.7], "unetr": [0.5, 0.6]})))
    chaos.merge_runs([a, b], tmp_path / "out", "python benchmarks/chaos_segmentation.py --merge a b")
    doc = json.loads((tmp_path / "out" / "chaos_segmentation.json").read_text())
    assert list(doc["summary"]) == ["mrfound", "unet", "unetr"]
    assert doc["summary"]["mrfound"]["dice_mean"] == pytest.approx(0.91)
    assert doc["summary"]["unet"]["dice_raw_mean"] == pytest.approx(0.65)
    assert doc["summary"]["unetr"]["hd95_per_fold"] == [10.0, 20.0]
    assert doc["target_met"] is True and doc["pretraining"] == {"steps": 3}
    assert [r["command"] for r in doc["runs"]] == [json.loads(f.read_text())["command"] for f in (a, b)]
    md = (tmp_path / "out" / "chaos_segmentation.md").read_text()
    assert "| mrfound | 0.910 ± 0.010 | 0.810 |" in md and "--merge a b" in md


def test_merge_refuses_different_settings_or_folds(chaos, tmp_path: Path) -> None:
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_text(json.dumps(_run(chaos, {"mrfound": [0.9, 0.9]})))
    b.write_text(json.dumps(_run(chaos, {"unet": [0.8, 0.8]}, minutes_per_fold=3)))
    with pytest.raises(SystemExit, match="minutes_per_fold = 3 differs"):
        chaos.merge_runs([a, b], tmp_path / "out", "merge")
    other = _run(chaos, {"unet": [0.8, 0.8]})
    other["per_fold"][1]["test"] = ["chaos_9"]
    b.write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="test subjects differ"):
        chaos.merge_runs([a, b], tmp_path / "out", "merge")
    assert not (tmp_path / "out").exists()


def test_merge_reads_a_run_without_organ_scale_as_the_default_range(chaos, tmp_path: Path) -> None:
    old = _run(chaos, {"mrfound": [0.9, 0.9]})
    new = _run(chaos, {"unet": [0.8, 0.8]}, organ_scale=[0.35, 1.5])
    del old["organ_scale"]  # recorded before --organ-scale existed
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(old))
    b.write_text(json.dumps(new))
    chaos.merge_runs([a, b], tmp_path / "out", "merge")
    assert "(gain 0.35-1.5)" in (tmp_path / "out" / "chaos_segmentation.md").read_text()
    b.write_text(json.dumps(_run(chaos, {"unet": [0.8, 0.8]}, organ_scale=[0.2, 1.5])))
    with pytest.raises(SystemExit, match="organ_scale"):
        chaos.merge_runs([a, b], tmp_path / "merged2", "merge")


def test_merge_refuses_runs_on_different_cpus(chaos, tmp_path: Path) -> None:
    # a wall-clock budget buys different step counts on different CPUs; a run that predates the
    # cpu_model key is not checked
    runs = {
        "a": _run(chaos, {"mrfound": [0.9, 0.9]}),
        "b": _run(chaos, {"unet": [0.8, 0.8]}),
        "old": _run(chaos, {"unetr": [0.6, 0.6]}),
    }
    runs["a"]["machine"]["cpu_model"] = "AMD EPYC"
    runs["b"]["machine"]["cpu_model"] = "Intel(R) Xeon(R) Platinum 8481C"
    files = []
    for name, run in runs.items():
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(run))
    with pytest.raises(SystemExit, match="cpu_model = 'Intel.*differs from .*a.json's 'AMD EPYC'"):
        chaos.merge_runs(files, tmp_path / "out", "merge")
    assert not (tmp_path / "out").exists()
    runs["b"]["machine"] |= {"cpu_model": "AMD EPYC", "native_bf16": False}  # same family name, no bf16
    files[1].write_text(json.dumps(runs["b"]))
    with pytest.raises(SystemExit, match="native_bf16 = False differs"):
        chaos.merge_runs(files, tmp_path / "out", "merge")
    runs["b"]["machine"].pop("native_bf16")
    files[1].write_text(json.dumps(runs["b"]))
    chaos.merge_runs(files, tmp_path / "out", "merge")
    doc = json.loads((tmp_path / "out" / "chaos_segmentation.json").read_text())
    assert [r["machine"].get("cpu_model") for r in doc["runs"]] == ["AMD EPYC", "AMD EPYC", None]


def test_merge_combines_runs_of_different_folds(chaos, tmp_path: Path) -> None:
    # two processes ran the same models on fold 0 and fold 1 (--only-fold); a run recorded before
    # --intensity-aug existed lacks the key and merges as intensity_aug 0
    first = _run(chaos, {"mrfound": [0.9, 0.0], "unet": [0.8, 0.0]}, intensity_aug=0.0)
    second = _run(chaos, {"mrfound": [0.0, 0.7], "unet": [0.0, 0.6]}, intensity_aug=0.0)
    first["per_fold"], second["per_fold"] = first["per_fold"][:1], second["per_fold"][1:]
    del second["intensity_aug"]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(first))
    b.write_text(json.dumps(second))
    chaos.merge_runs([b, a], tmp_path / "out", "merge")
    doc = json.loads((tmp_path / "out" / "chaos_segmentation.json").read_text())
    assert doc["folds"] == 2 and [f["fold"] for f in doc["per_fold"]] == [0, 1]
    assert doc["summary"]["mrfound"]["dice_per_fold"] == [0.9, 0.7]
    assert doc["summary"]["unet"]["dice_mean"] == pytest.approx(0.7) and doc["replaced"] == []
    # a rerun of fold 0 given after the full run replaces its fold 0, on the record
    rerun = _run(chaos, {"mrfound": [0.95, 0.0]}, intensity_aug=0.0)
    rerun["per_fold"] = rerun["per_fold"][:1]
    c = tmp_path / "c.json"
    c.write_text(json.dumps(rerun))
    chaos.merge_runs([b, a, c], tmp_path / "out3", "merge")
    doc = json.loads((tmp_path / "out3" / "chaos_segmentation.json").read_text())
    assert doc["summary"]["mrfound"]["dice_per_fold"] == [0.95, 0.7]
    assert doc["replaced"] == [{"fold": 0, "model": "mrfound", "by": "c.json", "replaced": "a.json"}]
    assert (
        "Fold 0 of mrfound: from c.json, a rerun (replaces a.json)."
        in (tmp_path / "out3" / "chaos_segmentation.md").read_text()
    )
    # a model missing from one fold is refused; so is a different augmentation
    second["per_fold"][0]["models"].pop("unet")
    b.write_text(json.dumps(second))
    with pytest.raises(SystemExit, match=r"fold 1 lacks \['unet'\]"):
        chaos.merge_runs([a, b], tmp_path / "out2", "merge")
    b.write_text(json.dumps(_run(chaos, {"mrfound": [0.9, 0.9], "unet": [0.8, 0.8]}, intensity_aug=0.8)))
    with pytest.raises(SystemExit, match="intensity_aug = 0.8 differs"):
        chaos.merge_runs([a, b], tmp_path / "out2", "merge")
    assert not (tmp_path / "out2").exists()


def test_merge_checks_head_settings_only_among_mrfound_runs(chaos, tmp_path: Path) -> None:
    # the MONAI models' runs do not depend on the mrfound head, so they merge with a run of another
    # feature size; two mrfound runs of different feature sizes or pretraining do not
    fs8, monai = tmp_path / "fs8.json", tmp_path / "monai.json"
    fs8.write_text(
        json.dumps(_run(chaos, {"mrfound": [0.9, 0.9], "mrfound_scratch": [0.8, 0.8]}, feature_size=8))
    )
    monai.write_text(json.dumps(_run(chaos, {"unet": [0.85, 0.85]}, feature_size=16)))
    chaos.merge_runs([monai, fs8], tmp_path / "out", "merge")
    doc = json.loads((tmp_path / "out" / "chaos_segmentation.json").read_text())
    assert doc["feature_size"] == 8 and doc["pretraining"] == {"steps": 3}
    assert set(doc["summary"]) == {"mrfound", "mrfound_scratch", "unet"}
    md = (tmp_path / "out" / "chaos_segmentation.md").read_text()
    assert "feature size 8" in md and "pretrained 3 steps on 24 phantom cases" in md
    scratch16 = tmp_path / "scratch16.json"
    scratch16.write_text(json.dumps(_run(chaos, {"mrfound_scratch": [0.8, 0.8]}, feature_size=16)))
    with pytest.raises(SystemExit, match="feature_size = 16 differs"):
        chaos.merge_runs([fs8, scratch16], tmp_path / "out2", "merge")
    other = _run(chaos, {"mrfound": [0.9, 0.9]}, feature_size=8)
    other["pretraining"] = {"steps": 3000}
    longer = tmp_path / "longer.json"
    longer.write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="steps = 3000 differs"):
        chaos.merge_runs([fs8, longer], tmp_path / "out2", "merge")
    # a pretraining recorded before its autocast was (fp32) merges with an explicit fp32 one, not bf16
    other["pretraining"] = {"steps": 3, "mixed_precision": "no"}
    longer.write_text(json.dumps(other))
    chaos.merge_runs([fs8, longer], tmp_path / "out3", "merge")
    other["pretraining"] = {"steps": 3, "mixed_precision": "bf16"}
    longer.write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="mixed_precision = 'bf16' differs"):
        chaos.merge_runs([fs8, longer], tmp_path / "out2", "merge")
    assert not (tmp_path / "out2").exists()


def test_pretrain_run_name_keys_every_pretraining_setting(chaos) -> None:
    import argparse

    base = {
        "spacing": 4.0,
        "roi": 32,
        "patch": 8,
        "pretrain_steps": 1000,
        "foreground": "otsu",
        "phantom_cases": 24,
        "batch_size": 4,
        "seed": 0,
        "mixed_precision": "no",
    }

    def name(**kw) -> str:
        return chaos.pretrain_run_name(argparse.Namespace(**(base | kw)))

    assert name() == "pretrain_s4_r32_p8_n1000"  # the folder of runs made before the keys existed
    assert name(foreground="log_otsu") == "pretrain_s4_r32_p8_n1000_log_otsu"
    assert name(phantom_cases=0, pretrain_steps=3000) == "pretrain_s4_r32_p8_n3000_ph0"
    assert name(batch_size=2, seed=1) == "pretrain_s4_r32_p8_n1000_b4_seed1"
    assert name(mixed_precision="bf16") == "pretrain_s4_r32_p8_n1000_bf16"
    assert name(mixed_precision="no") == name()  # fp32 runs keep their folders
    names = {name(), name(phantom_cases=0), name(batch_size=2), name(seed=1), name(mixed_precision="bf16")}
    assert len(names) == 5


def test_sample_batch_intensity_augmentation(chaos) -> None:
    mask = np.zeros((20, 20, 20), dtype=np.uint8)
    mask[5:15, 5:15, 5:15] = 1
    image = (0.3 * mask + 0.1)[None].astype(np.float32)
    case = {"image": image, "mask": mask, "body": mask.astype(bool), "affine": np.eye(4)}
    plain_x, plain_y = chaos.sample_batch([case], 8, 6, np.random.default_rng(0))
    aug_x, aug_y = chaos.sample_batch([case], 8, 6, np.random.default_rng(0), intensity_aug=1.0)
    assert plain_x.shape == aug_x.shape == (6, 1, 8, 8, 8) and plain_y.shape == (6, 1, 8, 8, 8)
    plain_levels = {round(float(v), 4) for v in plain_x.unique()}
    assert plain_levels <= {0.1, 0.4}  # every crop shows the two original intensities
    assert not set(round(float(v), 4) for v in aug_x.unique()) <= plain_levels
    # the liver alone gets a gain: voxels beyond its smoothed edge keep 0.1, liver voxels leave 0.4
    from scipy.ndimage import binary_dilation

    organ_x, organ_y = chaos.sample_batch([case], 8, 6, np.random.default_rng(0), organ_aug=1.0)
    x, liver = organ_x.numpy()[:, 0], organ_y.numpy()[:, 0] == 1
    far = np.stack([~binary_dilation(m, iterations=4) for m in liver])
    assert far.any() and liver.any()
    np.testing.assert_allclose(x[far], 0.1, atol=1e-3)  # (the Gaussian's tail reaches a little further)
    assert not np.allclose(x[liver], 0.4)
    assert 0.4 * 0.35 - 1e-3 < x[liver].min() and x[liver].max() < 0.4 * 1.5 + 1e-3
    # --organ-scale sets the range: a fixed gain of 0.2 darkens the liver's core to 0.08
    dark_x, dark_y = chaos.sample_batch(
        [case], 8, 6, np.random.default_rng(0), organ_aug=1.0, organ_scale=(0.2, 0.2)
    )
    x, liver = dark_x.numpy()[:, 0], dark_y.numpy()[:, 0] == 1
    assert x[liver].min() == pytest.approx(0.4 * 0.2, abs=2e-3)
    assert x[liver].max() < 0.4
    # --organ-dark 1 0.1: every liver-gain crop draws from 0.1..0.35, below the normal range
    dark_x, dark_y = chaos.sample_batch(
        [case], 8, 6, np.random.default_rng(0), organ_aug=1.0, organ_dark=(1.0, 0.1)
    )
    x, liver = dark_x.numpy()[:, 0], dark_y.numpy()[:, 0] == 1
    from scipy.ndimage import binary_erosion

    core = np.stack([binary_erosion(m, iterations=3, border_value=1) for m in liver])  # past the edge
    assert core.any() and 0.4 * 0.1 - 1e-3 < x[liver].min() and x[core].max() < 0.4 * 0.35 + 2e-3
    # share 0 makes no extra draw: the crops equal those of a run without the option
    same_x, _ = chaos.sample_batch(
        [case], 8, 6, np.random.default_rng(0), organ_aug=1.0, organ_dark=(0.0, 0.1)
    )
    np.testing.assert_array_equal(same_x.numpy(), organ_x.numpy())


def test_sample_batch_spatial_augmentation_keeps_image_and_labels_aligned(chaos) -> None:
    mask = np.zeros((80, 80, 80), dtype=np.uint8)
    mask[32:50, 30:46, 34:48] = 1  # a box-shaped liver, so rotations show
    image = (0.3 * mask + 0.1)[None].astype(np.float32)
    body = np.zeros_like(mask, dtype=bool)
    body[25:55, 25:55, 25:55] = True  # ROIs centred well inside the volume, margins included
    case = {"image": image, "mask": mask, "body": body, "affine": np.eye(4)}
    plain_x, plain_y = chaos.sample_batch([case], 16, 8, np.random.default_rng(0))
    warp_x, warp_y = chaos.sample_batch([case], 16, 8, np.random.default_rng(0), spatial_aug=1.0)
    assert warp_x.shape == plain_x.shape == (8, 1, 16, 16, 16) and warp_y.shape == plain_y.shape
    assert set(np.unique(warp_y.numpy())) <= {0, 1}
    x, liver = warp_x.numpy()[:, 0], warp_y.numpy()[:, 0] == 1
    # resampled linearly: new intensities on the edges, yet labels and image agree (nearest and linear
    # sampling part only on the edge voxels)
    assert not {round(float(v), 4) for v in warp_x.unique()} <= {0.1, 0.4}
    assert liver.any() and np.mean(x[liver] > 0.25) > 0.97 and np.mean(x[~liver] < 0.25) > 0.97
    # no padding zeros in the ROI: away from the border the margin covers the rotated box
    assert x.min() > 0.09


class _NaNEveryOtherStep:
    """A one-weight 'model' whose loss is NaN on every second call."""

    name = "fake"

    def __init__(self) -> None:
        import torch

        self.module = torch.nn.Linear(1, 1)
        self.groups = [{"params": list(self.module.parameters()), "lr_scale": 1.0, "weight_decay": 0.0}]
        self.calls = 0

    def loss(self, image, mask):
        self.calls += 1
        out = self.module(image.mean().reshape(1, 1)).sum()
        return out * float("nan") if self.calls % 2 == 0 else out**2


def test_train_timed_skips_non_finite_steps(chaos, monkeypatch) -> None:
    import argparse

    import torch

    net = _NaNEveryOtherStep()
    monkeypatch.setattr(
        chaos,
        "sample_batch",
        lambda cases, roi, batch, rng, aug=0.0, organ=0.0, spatial=0.0, organ_scale=None, **kw: (
            torch.ones(1, 1, 2, 2, 2),
            torch.zeros(1, 1, 2, 2, 2),
        ),
    )
    args = argparse.Namespace(
        mixed_precision="no",
        lr=1e-2,
        roi=2,
        batch_size=1,
        intensity_aug=0.0,
        organ_aug=0.0,
        organ_scale=[0.35, 1.5],
        spatial_aug=0.0,
    )
    info = chaos.train_timed(net, [], seconds=0.3, args=args, seed=0)
    assert info["steps"] >= 4 and info["skipped_nonfinite"] == info["steps"] // 2
    assert all(torch.isfinite(p).all() for p in net.module.parameters())
    assert info["final_loss"] is not None and np.isfinite(info["final_loss"])


def test_cpu_budget_clock_does_not_count_time_the_process_waits(chaos, monkeypatch) -> None:
    # a process that shares its core waits its turn: the CPU clock stops, the wall clock does not
    import argparse
    import time

    import torch

    def waiting_batch(*args, **kwargs):
        time.sleep(0.01)  # not CPU time
        return torch.ones(1, 1, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2)

    monkeypatch.setattr(chaos, "sample_batch", waiting_batch)
    base = {"mixed_precision": "no", "lr": 1e-2, "roi": 2, "batch_size": 1, "intensity_aug": 0.0}
    base |= {"organ_aug": 0.0, "organ_scale": [0.35, 1.5], "spatial_aug": 0.0}
    cpu = chaos.train_timed(
        _NaNEveryOtherStep(), [], 0.1, argparse.Namespace(**base, budget_clock="cpu"), seed=0
    )
    assert cpu["train_s"] >= 0.1 and cpu["train_wall_s"] > 2 * cpu["train_s"]  # (times rounded to 0.1 s)
    wall = chaos.train_timed(
        _NaNEveryOtherStep(), [], 0.1, argparse.Namespace(**base, budget_clock="wall"), seed=0
    )
    assert wall["train_wall_s"] == pytest.approx(wall["train_s"], abs=0.05)


def test_main_refuses_emulated_bf16_before_any_work(chaos, tmp_path: Path, monkeypatch) -> None:
    # a wall-clock budget spent on emulated bf16 would time the emulation, not the models
    (tmp_path / "data" / "images").mkdir(parents=True)
    monkeypatch.setattr(chaos, "resolve_autocast", lambda requested: "no")
    argv = ["chaos_segmentation.py", "--data", str(tmp_path / "data"), "--work", str(tmp_path / "work")]
    monkeypatch.setattr("sys.argv", [*argv, "--mixed-precision", "bf16"])
    with pytest.raises(SystemExit, match="--mixed-precision bf16: this CPU only emulates it"):
        chaos.main()
    assert not (tmp_path / "work").exists()


CHAOS = Path(__file__).resolve().parents[3] / "shared" / "data" / "chaos_t2"


@pytest.mark.skipif(not (CHAOS / "images").is_dir(), reason="../shared/data/chaos_t2 is absent")
def test_main_runs_end_to_end_on_four_real_subjects(chaos, tmp_path: Path, monkeypatch) -> None:
    # the whole script on real data, as small as it goes: 4 subjects, 2 folds (1 run), 8 mm, a second of UNet
    data = tmp_path / "data"
    for sub in ("images", "labels"):
        (data / sub).mkdir(parents=True)
        for f in sorted((CHAOS / sub).iterdir())[:4]:
            (data / sub / f.name).symlink_to(f)
    argv = [
        "chaos_segmentation.py", "--data", str(data), "--work", str(tmp_path / "work"), "--out",
        str(tmp_path / "out"), "--models", "unet", "--minutes-per-fold", "0.02", "--folds", "2",
        "--max-folds", "1", "--spacing", "8", "--roi", "32", "--phantom-predict-steps", "0", "--threads", "1",
        "--save-predictions", str(tmp_path / "pred"), "--tag", "smoke",
    ]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    chaos.main()
    doc = json.loads((tmp_path / "out" / "chaos_segmentation.smoke.json").read_text())
    assert doc["machine"]["cpu_model"] and isinstance(doc["machine"]["native_bf16"], bool)
    assert doc["organ_scale"] == [0.35, 1.5] and doc["fp32_max_voxels"] == 8
    (fold,) = doc["per_fold"]
    unet = fold["models"]["unet"]
    assert len(fold["test"]) == 2 and unet["steps"] >= 1 and 0.0 <= unet["dice"] <= 1.0
    saved = sorted(p.name for p in (tmp_path / "pred" / "unet").iterdir())
    assert saved == [f"{c}.nii.gz" for c in fold["test"]]
    assert doc["target_met"] is None  # no mrfound model in the run


def test_settings_line_names_the_dark_liver_share(chaos) -> None:
    assert chaos._dark_text([0.1, 0.2], [0.35, 1.5]) == "; 10 % of those crops 0.2-0.35"
    for off in ([0.0, 0.2], None, 1):  # off, or a run recorded before the option
        assert chaos._dark_text(off, [0.35, 1.5]) == ""
