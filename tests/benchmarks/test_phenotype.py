"""Smoke test of benchmarks/phenotype.py at its micro ``tiny`` budget (no claims about the numbers)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from testutils import load_module

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ph():
    """The benchmark script imported as a module."""
    return load_module("benchmarks/phenotype.py")


@pytest.mark.slow
def test_tiny_budget_writes_every_result(ph, tmp_path: Path) -> None:
    out, work = tmp_path / "results", tmp_path / "work"
    from mrfound.data.sequences import SEQUENCES

    recipe = ["--pretrain-steps", "4", "--pretrain-warmup", "1", "--lesion-crops", "0.5"]
    recipe += ["--extra-unlabeled", "6", "--probe-pooling", "centre_per_sequence", "--probe-absent", "impute"]
    recipe += ["--probe-train-protocols", "each", "--ours-sequence-drop", "0.75"]
    recipe += ["--ft-pooling", "centre_per_sequence"]
    recipe += ["--ours-consistency-weight", "0.1", "--ft-min-steps", "3", "--ours-mask-mode", "tube"]
    ph.main(
        [
            "--budget",
            "tiny",
            "--out",
            str(out),
            "--work",
            str(work),
            "--workers",
            "1",
            "--cases",
            "24",
            *recipe,
        ]
    )

    saved = json.loads((out / "phenotype_tiny.json").read_text())
    # provenance of the run
    assert saved["command"].endswith("--ours-consistency-weight 0.1 --ft-min-steps 3 --ours-mask-mode tube")
    assert saved["date"] and "git_commit" in saved
    st = saved["settings"]
    assert (st["pretrain_steps"], st["pretrain_warmup_steps"], st["pretrain_lesion_crops"]) == (4, 1, 0.5)
    assert (st["probe_pooling"], st["probe_absent"]) == ("centre_per_sequence", "impute")
    assert st["probe_train_protocols"] == "each"
    assert (st["ours_consistency_weight"], st["ft_min_steps"], st["ours_mask_mode"]) == (0.1, 3, "tube")
    # the extra unlabeled cases: another seed, no label, their own ids, in pretraining only
    extra = saved["extra_unlabeled"]
    assert (extra["cases"], extra["seed"], extra["id_prefix"]) == (6, 101, "u")
    extra_csv = next(work.glob("extra_*/manifest.csv"))
    rows = extra_csv.read_text().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 7 and all(r.split(",")[header.index("label")] == "" for r in rows[1:])
    assert all(r.startswith("uph") for r in rows[1:])
    assert not any(c.startswith("u") for c in saved["split"]["train"] + saved["split"]["test"])
    # the pretraining recipe reaches mrfound's pretraining runs and the MONAI baseline's
    for name in ("ours", "plain_mae"):
        cfg = json.loads(next(work.glob(f"pretrain_{name}_*/config.json")).read_text())
        assert (cfg["steps"], cfg["warmup_steps"], cfg["lesion_crops"]) == (4, 1, 0.5)
        assert cfg["manifest"] == [str(work / "train.csv"), str(extra_csv)]
        assert cfg["mae"]["sequence_drop"] == {"ours": 0.75, "plain_mae": 0.0}[name]
        assert cfg["mae"].get("consistency_weight") == {"ours": 0.1, "plain_mae": None}[name]
        assert cfg["mae"].get("mask_mode") == {"ours": "tube", "plain_mae": None}[name]
    assert len(list(work.glob("pretrain_monai_*/final.safetensors"))) == 1
    m = saved["machine_start"]
    assert m["cpu_count"] >= 1 and m["torch_threads"] >= 1 and len(m["load_average_1_5_15min"]) == 3
    assert saved["wall_s"]["total"] > 0 and saved["seed"] == 0
    # every variant and axis is there, measured
    assert set(saved["probes"]) == set(ph.FEATURE_SETS)
    for fs in ph.FEATURE_SETS:
        p = saved["probes"][fs]
        assert set(p["protocols"]) == {"all", "no_contrast", "t2_only", "contrast_only"}
        auc = p["protocols"]["all"]["auc_macro"]["value"]
        assert 0.0 <= auc <= 1.0
        assert set(p["fractions"]) == {"0.5", "1.0"}
        assert p["centers"] and "pooled" in p["loco"]
    assert st["ft_pooling"] == "centre_per_sequence"
    for v in ("ft_ours", "ft_scratch"):
        assert set(saved["finetune"][v]) == {"0.5", "1.0"}
        assert saved["finetune"][v]["1.0"]["pooling"] == "centre_per_sequence"
        assert saved["finetune"][v]["1.0"]["from_scratch"] is (v == "ft_scratch")
    assert set(saved["loco_finetune"]) == {"ft_ours", "ft_scratch"}
    # the split never puts a subject on both sides
    assert not set(saved["split"]["train"]) & set(saved["split"]["test"])
    # sequence importance is cross-checked against the signature table
    si = saved["sequence_importance"]
    assert set(si["table_importance"]) == set(SEQUENCES)
    assert set(si["drops"]) <= set(SEQUENCES)
    assert math.isclose(sum(si["table_importance"].values()), 1.0, rel_tol=1e-6)
    assert saved["claims"]["text"]
    # markdown and figures
    md = (out / "phenotype_tiny.md").read_text()
    for fig in saved["figures"]:
        assert (out / fig).read_bytes()[:4] == b"\x89PNG" and fig in md
    assert "## Missing-sequence protocols" in md and "## Sequence importance" in md
    assert "synthesised from the kept ones by each model's own decoder" in md
    assert "head pooling centre_per_sequence" in md and "(`mae.sequence_drop`) 0.75 for ours" in md
    assert "ours adds the cross-view consistency term (`mae.consistency_weight` 0.1)" in md
    assert "ours hides patches by `mae.mask_mode` tube" in md
    assert "trained on the training cases under every protocol (protocol augmentation)" in md

    # a checkpoint pretrained beforehand is accepted only with this run's recipe, data and no test subject
    import pandas as pd

    final = next(work.glob("pretrain_ours_*")) / "final"
    b = ph.dataclasses.replace(
        ph.BUDGETS["tiny"], pretrain_steps=4, pretrain_warmup_steps=1, pretrain_lesion_crops=0.5
    )

    def recipe_of(budget, sequence_drop=0.75, consistency_weight=0.1, mask_mode="tube"):
        train, cache = work / "train.csv", work / "cache"
        return ph._pretrain_config(
            train, extra_csv, cache, budget, 0, sequence_drop, consistency_weight, mask_mode
        )

    cases = set(saved["split"]["train"]) | {r.split(",")[0] for r in rows[1:]}
    nobody = {"no-such-subject"}
    path, info = ph.reuse_pretrained("ours", final, recipe_of(b), cases, nobody)
    assert path == final and info["checkpoint"] == str(final) and len(info["data"]) == 2
    with pytest.raises(SystemExit, match=r"--pretrained ours: .*another recipe: mae .*sequence_drop"):
        ph.reuse_pretrained("ours", final, recipe_of(b, 0.0), cases, nobody)
    with pytest.raises(SystemExit, match=r"another recipe: mae .*consistency_weight"):
        ph.reuse_pretrained("ours", final, recipe_of(b, consistency_weight=0.0), cases, nobody)
    with pytest.raises(SystemExit, match=r"another recipe: mae .*mask_mode"):
        ph.reuse_pretrained("ours", final, recipe_of(b, mask_mode="random"), cases, nobody)
    with pytest.raises(SystemExit, match="another recipe: steps 4 "):
        longer = ph.dataclasses.replace(b, pretrain_steps=5)
        ph.reuse_pretrained("ours", final, recipe_of(longer), cases, nobody)
    seen = pd.read_csv(work / "train.csv", dtype=str)["subject"].iloc[0]
    with pytest.raises(SystemExit, match=f"pretrained on 1 test subjects \\(e.g. {seen}\\)"):
        ph.reuse_pretrained("ours", final, recipe_of(b), cases, {seen})
    with pytest.raises(SystemExit, match="other cases than this run's pretraining data"):
        ph.reuse_pretrained("ours", final, recipe_of(b), cases | {"ph99999"}, nobody)
    # ... and used by the benchmark in place of pretraining that variant
    plain = next(work.glob("pretrain_plain_mae_*")) / "final"
    again = tmp_path / "again"
    redo = ph.main(
        ["--budget", "tiny", "--out", str(again), "--work", str(work), "--workers", "1", "--cases", "24",
         *recipe, "--pretrained", f"plain_mae={plain}"]
    )  # fmt: skip
    assert set(redo["pretrained_checkpoints"]) == {"plain_mae"}
    assert "plain_mae was pretrained beforehand" in (again / "phenotype_tiny.md").read_text()

    # the pooling diagnostic reads the same work folder: every pooling x protocol, pretrained and random
    pool = load_module("benchmarks/pooling_probe.py")
    run = next(work.glob("pretrain_ours_*")).name
    doc = pool.main(["--work", str(work), "--runs", run, "--out", str(out / "pooling.json"), "--per-block"])
    assert set(doc["results"]) == {run, f"{run} (random init)"}
    depth = json.loads((work / run / "final" / "config.json").read_text())["encoder"]["depth"]
    for res in doc["results"].values():
        assert set(res) == set(pool.POOLINGS) | {f"block_{i}" for i in range(depth)}
        assert all(set(r) == set(pool.PROTOCOLS) for r in res.values())
        assert all(0.0 <= r["all"] <= 1.0 for r in res.values())
    assert json.loads((out / "pooling.json").read_text())["results"] == doc["results"]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--pretrain-steps", "0", "--pretrain-steps must be >= 1, got 0"),
        ("--pretrain-warmup", "-1", "--pretrain-warmup must be >= 0, got -1"),
        ("--lesion-crops", "1.5", "--lesion-crops must be in [0, 1], got 1.5"),
        ("--ours-sequence-drop", "0", "--ours-sequence-drop must be in (0, 1], got 0.0"),
        ("--ours-consistency-weight", "-1", "--ours-consistency-weight must be >= 0, got -1.0"),
        ("--ft-min-steps", "0", "--ft-min-steps must be >= 1, got 0"),
        ("--ours-mask-mode", "block", "argument --ours-mask-mode: invalid choice: 'block'"),
        ("--extra-unlabeled", "-1", "--extra-unlabeled must be >= 0, got -1"),
        ("--extra-seed", "0", "--extra-seed must differ from --seed"),
        ("--pretrained", "mine=/x", "--pretrained must be NAME=CHECKPOINT with NAME in ours, plain_mae"),
        ("--extra-manifest", "x.csv --extra-unlabeled 3", "give --extra-unlabeled or --extra-manifest"),
    ],
)
def test_bad_pretraining_recipe_is_refused_before_any_work(ph, tmp_path: Path, capsys, flag, value, message):
    work, out = tmp_path / "work", tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        ph.main(["--budget", "tiny", "--work", str(work), "--out", str(out), flag, *value.split()])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not work.exists() and not out.exists()


def test_table_importance_credits_the_contrast_phases(ph) -> None:
    from mrfound.data.sequences import CLASSES, SEQUENCES

    imp = ph.table_importance(SEQUENCES, CLASSES)
    assert math.isclose(sum(imp.values()), 1.0, rel_tol=1e-9)
    # the arterial phase separates more class pairs than the unenhanced T1 (a textbook fact the table encodes)
    assert imp["t1_art"] > imp["t1_pre"]
    assert imp["t2"] > imp["t1_pre"]


def test_monai_adapter_follows_the_training_protocol(ph) -> None:
    torch.manual_seed(0)
    model = ph.ChannelStackedMAE(
        ("t2", "dwi", "t1_pv"),
        16,
        8,
        embed_dim=24,
        depth=1,
        num_heads=2,
        decoder_dim=24,
        decoder_depth=1,
        decoder_heads=2,
    )
    image = torch.rand(2, 3, 16, 16, 16)
    available = torch.tensor([[True, True, False], [True, False, True]])
    out = model({"image": image, "available": available})
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.net.patch_embedding.patch_embeddings[1].weight.grad is not None
    # a zero-filled (missing) channel gives the same features whatever its content
    noisy = image.clone()
    noisy[0, 2] = 5.0
    with torch.no_grad():
        assert torch.allclose(model.embed(image, available), model.embed(noisy, available))
        assert model.embed(image, available).shape == (2, 24)


def test_radiomics_protocol_tables_equal_per_protocol_extraction(ph, tmp_path: Path) -> None:
    """The one-pass radiomics tables equal the library's per-protocol extraction."""
    import numpy as np

    from mrfound.data.manifest import read_manifest
    from mrfound.data.phantom import PhantomConfig, generate_cohort
    from mrfound.data.preprocess import PreprocessConfig
    from mrfound.finetune.radiomics import radiomics_feature_fn

    path = generate_cohort(tmp_path / "c", 2, 3, PhantomConfig(spacing_scale=3.0), workers=1)
    m = read_manifest(path)
    pp = PreprocessConfig(spacing=4.0, roi_size=16)
    keep = {"all": m.vocabulary.sequences, "t2_only": ("t2",), "contrast_only": ("t1_art", "t1_pv", "t1_del")}
    fast = ph.radiomics_protocol_fn(pp, tmp_path / "cache")(m, keep)
    slow = radiomics_feature_fn(pp, cache_dir=tmp_path / "cache")(m, keep)
    for p in keep:
        assert list(fast[p]["case"]) == list(slow[p]["case"])
        a = fast[p].drop(columns="case").to_numpy(float)
        b = slow[p].drop(columns="case").to_numpy(float)
        assert np.allclose(a, b, equal_nan=True)


def test_probe_suite_handles_one_labelled_case_per_class(ph) -> None:
    """5 % of a small training set leaves one case per class: the probe then fits without inner CV."""
    import dataclasses

    import numpy as np
    import pandas as pd

    from mrfound.data.sequences import CLASSES, MALIGNANT

    rng = np.random.default_rng(0)

    def table(n_per_class: int, prefix: str) -> pd.DataFrame:
        labels = [c for c in CLASSES for _ in range(n_per_class)]
        t = pd.DataFrame(rng.normal(size=(len(labels), 6)), columns=[f"f{i}" for i in range(6)])
        t.insert(0, "case", [f"{prefix}{i}" for i in range(len(labels))])
        t.insert(1, "subject", t["case"])
        t.insert(2, "label", labels)
        t.insert(3, "center", ["a", "b"] * (len(labels) // 2))
        return t

    budget = dataclasses.replace(ph.BUDGETS["small"], n_boot=0, probe_fractions=(0.05, 1.0))
    tr, te = table(4, "tr"), table(2, "te")
    out = ph.probe_suite(tr, {"all": te}, {}, ["all"], CLASSES, MALIGNANT, budget, seed=0)
    assert out["fractions"]["0.05"]["n_train"] == len(CLASSES)
    assert 0.0 <= out["fractions"]["0.05"]["auc_macro"]["value"] <= 1.0
    # protocol augmentation reaches the protocol probe only; the label-fraction probe stays on complete exams
    shifted = tr.assign(**{f"f{i}": tr[f"f{i}"] + rng.normal(size=len(tr)) for i in range(6)})
    args = (tr, {"all": te}, {}, ["all"], CLASSES, MALIGNANT, budget)
    aug = ph.probe_suite(*args, seed=0, augment={"p": shifted})
    assert aug["protocols"]["all"]["auc_macro"] != out["protocols"]["all"]["auc_macro"]
    assert aug["fractions"]["0.05"] == out["fractions"]["0.05"]
