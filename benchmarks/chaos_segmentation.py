"""Real-data liver segmentation on CHAOS T2 (15 subjects): pretrained mrfound vs MONAI UNet / UNETR.

Protocol (issue 5, DESIGN §7):

1. Manifest with ``mrfound manifest`` (organ labels remapped to liver = 1). Every volume is preprocessed
   with the log-Otsu foreground (``--foreground log_otsu``, for pretraining and segmentation alike):
   raw Otsu normalises the whole liver of cases 15 and 36 to 0 (see :mod:`mrfound.data.preprocess`);
   with it, the run of commit ddf15b3 scored mrfound 0.720, UNet 0.804, UNETR 0.602, and 0.755, 0.833,
   0.706 with log-Otsu at commit 9e16897. ``--intensity-aug P`` gives that share of the training crops,
   for every model, a random gamma and gain (:func:`mrfound.data.augment.augment_intensity`): the two
   subjects with the darkest normalised livers (15, 36) failed without it (0.825, 0.864, 0.708 with
   ``--intensity-aug 0.8`` at commit a5c8ae7). ``--organ-aug P`` also gives that share of the crops
   a random gain on the liver only (:func:`mrfound.data.augment.augment_organ_contrast`): subject 15's
   liver is darker than the tissue around it, which no global gamma teaches. ``--spatial-aug P`` rotates
   and zooms that share of the crops with their labels (:func:`mrfound.data.augment.augment_spatial`):
   twelve training subjects show twelve liver tilts and sizes.
2. Pretraining (``mrfound.pretrain``, masked-modality autoencoder, ``tiny`` width) on a simulated phantom
   cohort plus the 15 CHAOS T2 volumes used **without their labels** (a copy of the manifest with no
   mask column). All CHAOS volumes take part, the test folds' too: self-supervised use of unlabelled
   target-domain images, labels never seen.
3. 5-fold cross-validation over subjects (seeded ``KFold``). In every fold each model trains on the same
   training subjects, with the same crops (half centred on a random liver voxel, half on a random body
   voxel), batch size, AdamW and a cosine learning-rate schedule over the **same wall-clock budget**
   (``--minutes-per-fold``):

   * ``mrfound``: the pretrained encoder (restricted to the task's one sequence: its sequence embedding
     row for ``t2`` is kept, so the segmentation head's image skip has one input channel) +
     :class:`mrfound.models.heads.SegmentationHead` (``--skip-source image``: the intermediate skips come
     from a conv pyramid over the image, the ViT tokens enter at 1/p; ``tokens`` is the UNETR-style
     head), layer-wise LR decay, MONAI DiceCE (its own loss);
   * ``unet``: MONAI ``UNet`` (16-256 channels, 4 down-samplings, 2 residual units) from scratch;
   * ``unetr``: MONAI ``UNETR`` (width 192, 12 blocks, 3 heads, feature size 16) from scratch;
   * ``mrfound_scratch`` (optional): the mrfound architecture at random init.

   Every model trains under the same precision (``--mixed-precision``, fp32 by default; inference is
   always fp32), and so does the ``mrfound`` pretraining stage. bf16 autocast makes the steps 1.2x
   (UNet) to 1.7x (mrfound) faster on a CPU with AVX-512 BF16, and 1.2x / 2.1x on AMX (7 min per fold,
   6 mm grid: 2971 vs 2410 and 1728 vs 815 steps). A first trial collapsed the UNet to all-background
   (Dice 0) through a NaN update, which ``train_timed`` now skips; with that guard, on AMX at 6 mm,
   mrfound at random init scored 0.861 and the UNet 0.876 under bf16, vs 0.852 / 0.869 in fp32 (those
   with the older spatial-augmentation crop placement, so not a clean comparison; README, CHAOS). It
   stays off by default so the commands of the fp32 results keep their meaning; emulated bf16 (no
   AVX512-BF16/AMX) is far slower than fp32 and refused.

4. Test subjects are segmented whole (sliding window, ``--overlap``, 0.25 by default; ``--tta mirror``
   averages the probabilities over the 8 mirrorings of the volume), and every model's segmentation is
   post-processed alike (``--postprocess largest``: keep the largest connected component,
   :func:`mrfound.inference.keep_largest_foreground`). Liver Dice and HD95 (mm) with MONAI metrics on
   the preprocessing grid (``--spacing`` mm isotropic), Dice before post-processing (``dice_raw``), and
   Dice on each case's native grid (the prediction resampled back through the affines, nearest
   neighbour, vs. the original label map). ``--save-predictions DIR`` keeps those native-grid
   segmentations (``DIR/<model>/<case>.nii.gz``) for a look at the failures. The same trained weights are
   also scored under other window overlaps (``dice_by_inference``: 0.25 and the half-patch-offset
   overlap), so a run shows what the overlap is worth per model.

5. Before the folds, a phantom check of the inference path: the same pretrained checkpoint is fine-tuned
   on simulated cases (``mrfound finetune --task segment``), ``mrfound predict`` segments held-out ones, and
   the files are scored against the phantom masks on their own grids (``results/predict_phantom.json``).

Prints one JSON object (with the command line, machine, load average) and writes
``results/chaos_segmentation.json`` and ``results/chaos_segmentation.md``. Needs ``../shared/data/chaos_t2``.

On 2 cores the models can run as two one-thread processes side by side (``--models ... --tag a`` and
``--models ... --tag b`` write ``chaos_segmentation.a.json`` / ``.b.json``); ``--merge A B`` then checks
that both used the same folds and settings and writes the combined report. Each process keeps its own
core, so the wall-clock budgets stay comparable. Runs may also split the folds (``--max-folds N`` runs
folds 0..N-1, ``--only-fold K`` fold K); the merge combines them fold by fold and refuses a fold that
lacks a model.

Usage::

    .venv/bin/python benchmarks/chaos_segmentation.py [--minutes-per-fold 3] [--spacing 4] [--roi 32]
        [--pretrain-steps 1000] [--models mrfound,unet,unetr] [--folds 5] [--tag NAME]
    .venv/bin/python benchmarks/chaos_segmentation.py --merge results/chaos_segmentation.a.json \
        results/chaos_segmentation.b.json
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import choose_threads, resolve_autocast  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from mrfound.data.augment import DEFAULT_ORGAN_SCALE  # noqa: E402
from mrfound.utils.machine import load_average as _load  # noqa: E402

MODELS = ("mrfound", "unet", "unetr", "mrfound_scratch")

NO_ORGAN_DARK = (0.0, 0.2)
"""``--organ-dark`` off: no crop draws a darker liver gain (0.2, the low end it would use, is recorded)."""


def build_manifests(data: Path, work: Path) -> tuple[Path, Path]:
    """CHAOS manifest with liver masks (via ``mrfound manifest``) and an unlabelled copy for pretraining."""
    import pandas as pd

    from mrfound.cli import main as cli

    labelled = work / "chaos" / "manifest.csv"
    if not labelled.is_file():
        rc = cli(
            [
                "manifest",
                "--root",
                str(data),
                "--pattern",
                "images/chaos_{case}_t2.nii.gz",
                "--sequence",
                "t2",
                "--mask-pattern",
                "labels/chaos_{case}_labels.nii.gz",
                "--mask-map",
                "1:1,2:0,3:0,4:0",
                "--out",
                str(labelled),
            ]
        )
        if rc != 0:
            raise SystemExit(f"mrfound manifest failed with exit code {rc}")
    frame = pd.read_csv(labelled, dtype=str, keep_default_na=False)
    frame["case"] = "chaos_" + frame["case"]
    frame["subject"] = frame["case"]
    root = labelled.parent
    frame["t2"] = [str((root / p).resolve()) for p in frame["t2"]]
    unlabelled = work / "chaos" / "manifest_unlabelled.csv"
    from mrfound.utils.io import atomic_write_text

    atomic_write_text(unlabelled, frame.drop(columns=["mask"]).to_csv(index=False))
    return labelled, unlabelled


def pretrain_run_name(args: argparse.Namespace) -> str:
    """Folder of the pretraining run: every setting that changes it, so a cached run is reused only for them.

    Settings at their defaults add nothing, so the folders of runs made before a setting was keyed keep
    their names (raw Otsu, 24 phantom cases and batch 4, i.e. pretraining batch 8, were the only choices).
    """
    name = f"pretrain_s{args.spacing:g}_r{args.roi}_p{args.patch}_n{args.pretrain_steps}"
    if args.foreground != "otsu":
        name += f"_{args.foreground}"
    if args.phantom_cases != 24:
        name += f"_ph{args.phantom_cases}"
    if args.batch_size != 4:
        name += f"_b{2 * args.batch_size}"
    if args.seed != 0:
        name += f"_seed{args.seed}"
    if args.mixed_precision != "no":
        name += f"_{args.mixed_precision}"
    return name


def pretrain_encoder(args: argparse.Namespace, work: Path, unlabelled: Path) -> tuple[Path, dict[str, Any]]:
    """Phantom cohort + unlabelled CHAOS -> pretrained tiny masked-modality autoencoder (``RUN/final``)."""
    import pandas as pd

    from mrfound.data.phantom import PhantomConfig, generate_cohort
    from mrfound.pretrain.config import PretrainConfig
    from mrfound.pretrain.run import pretrain

    run = work / pretrain_run_name(args)
    final = run / "final"
    if (final / "model.safetensors").is_file():
        return final, json.loads((run / "pretrain_info.json").read_text())
    t0 = time.time()
    manifests = [str(unlabelled)]
    if args.phantom_cases > 0:
        phantom = work / (f"phantom_{args.phantom_cases}" + (f"_seed{args.seed}" if args.seed else ""))
        if not (phantom / "manifest.csv").is_file():
            generate_cohort(
                phantom,
                args.phantom_cases,
                seed=args.seed,
                config=PhantomConfig(spacing_scale=1.5),
                workers=1,
            )
        manifests.insert(0, str(phantom / "manifest.csv"))
    t_sim = time.time() - t0
    cfg = PretrainConfig(
        out=str(run),
        manifest=manifests,
        model="tiny",
        model_overrides={"patch_size": args.patch},
        roi_size=args.roi,
        spacing=args.spacing,
        steps=args.pretrain_steps,
        batch_size=args.batch_size * 2,
        lr=5e-4,
        samples_per_case=4,
        eval_fraction=0.0,
        save_every=0,
        log_every=20,
        tensorboard=False,
        seed=args.seed,
        cache_dir=str(work / "cache_pretrain"),
        preprocess={"foreground": args.foreground},
        mixed_precision=args.mixed_precision,
    )
    res = pretrain(cfg, command="benchmarks/chaos_segmentation.py (pretraining stage)")
    info = {
        "steps": res.steps,
        "wall_s": round(res.wall_s, 1),
        "train_wall_s": round(res.train_wall_s, 1),
        "simulate_s": round(t_sim, 1),
        "phantom_cases": args.phantom_cases,
        "chaos_cases_unlabelled": len(pd.read_csv(unlabelled, dtype=str)),
        "final_loss": res.train.last_logs.get("loss"),
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "mixed_precision": cfg.mixed_precision,
    }
    (run / "pretrain_info.json").write_text(json.dumps(info, indent=2))
    return res.final_dir, info


def restricted_encoder(final: Path | None, sequences: tuple[str, ...], roi: int, patch: int) -> Any:
    """The pretrained encoder keeping only ``sequences`` (their embedding rows), or a random one."""
    import torch

    from mrfound.models.config import EncoderConfig
    from mrfound.models.encoder import MultiSequenceViT
    from mrfound.models.registry import get_model_config

    if final is None:
        return MultiSequenceViT(get_model_config("tiny", img_size=roi, patch_size=patch, sequences=sequences))
    from mrfound.models.checkpoint import load_model

    mae, _ = load_model(final, device="cpu")
    old = mae.encoder
    cfg = EncoderConfig.from_dict({**old.config.to_dict(), "sequences": list(sequences)})
    enc = MultiSequenceViT(cfg)
    state = old.state_dict()
    idx = [old.config.sequences.index(s) for s in sequences]
    state["seq_embed"] = state["seq_embed"][torch.as_tensor(idx)]
    enc.load_state_dict(state, strict=True)
    return enc


def load_cases(
    manifest: Path, spacing: float, roi: int, cache: Path, foreground: str
) -> list[dict[str, Any]]:
    """Preprocessed CHAOS volumes (t2 only, liver mask) on the common grid, plus native-grid metadata."""
    from mrfound.data.cache import PreprocessCache
    from mrfound.data.manifest import read_manifest
    from mrfound.data.preprocess import PreprocessConfig
    from mrfound.data.readers import read_header
    from mrfound.data.sequences import Vocabulary

    vocab = Vocabulary(sequences=("t2",))
    man = read_manifest(manifest, vocab)
    pc = PreprocessCache(cache, PreprocessConfig(spacing=spacing, roi_size=roi, foreground=foreground), vocab)
    cases = []
    for c in man.cases:
        s = pc.get(c)
        mask = (np.asarray(s["mask"][0]) == 1).astype(np.uint8)
        h = read_header(c.mask)
        cases.append(
            {
                "case": c.case,
                "image": np.asarray(s["image"], dtype=np.float32),
                "mask": mask,
                "body": np.asarray(s["body"], dtype=bool),
                "affine": np.asarray(s["affine"]),
                "mask_path": c.mask,
                "native_affine": h.affine,
                "native_shape": h.shape,
            }
        )
    return cases


def sample_batch(
    cases: list[dict[str, Any]],
    roi: int,
    batch: int,
    rng: np.random.Generator,
    intensity_aug: float = 0.0,
    organ_aug: float = 0.0,
    spatial_aug: float = 0.0,
    organ_scale: tuple[float, float] = DEFAULT_ORGAN_SCALE,
    organ_dark: tuple[float, float] = NO_ORGAN_DARK,
) -> tuple:
    """Random crops: half centred on a liver voxel, half on a body voxel (same for every model).

    With probability ``spatial_aug`` the ROI is cut with a margin and rotated and zoomed with its labels
    (:func:`mrfound.data.augment.augment_spatial`; no draw when 0); the ROI is placed as without it.
    (Until commit c6e55ee the larger cube itself was shifted to fit inside the volume, so its central ROI
    never came near the border; the 2026-12-06 CHAOS runs in README used that version.)

    With probability ``intensity_aug`` a crop gets a random gamma and gain
    (:func:`mrfound.data.augment.augment_intensity`); no draw is made when it is 0, so runs without it
    see the crops they saw before the option existed. Before that, with probability ``organ_aug``, the
    liver of a crop gets its own random gain (:func:`mrfound.data.augment.augment_organ_contrast`; again
    no draw when 0), drawn log-uniformly in ``organ_scale``; with ``organ_dark = (share, low)``, that
    share of those crops draws it in ``(low, organ_scale[0])`` instead: livers darker than any training
    subject's, on a few crops only (no draw when the share is 0).
    """
    import torch

    from mrfound.data.augment import (
        augment_intensity,
        augment_organ_contrast,
        augment_spatial,
        spatial_context,
    )
    from mrfound.data.preprocess import random_crop

    images, masks = [], []
    for _ in range(batch):
        c = cases[int(rng.integers(len(cases)))]
        centre_on = c["mask"].astype(bool) if rng.random() < 0.5 else c["body"]
        warp = spatial_aug > 0 and rng.random() < spatial_aug
        crop = random_crop(
            {"image": c["image"], "mask": c["mask"][None], "body": centre_on, "affine": c["affine"]},
            roi,
            rng,
            context=spatial_context(roi) if warp else 0,
        )
        image, mask = crop["image"], crop["mask"]
        if warp:
            image, mask = augment_spatial(image, mask, rng, out_size=roi)
        if organ_aug > 0 and rng.random() < organ_aug:
            scale = tuple(organ_scale)
            if organ_dark[0] > 0 and rng.random() < organ_dark[0]:
                scale = (organ_dark[1], organ_scale[0])
            image = augment_organ_contrast(image, mask, rng, scale=scale)
        if intensity_aug > 0 and rng.random() < intensity_aug:
            image = augment_intensity(image, rng)
        images.append(image)
        masks.append(mask)
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks).astype(np.int64))


class _Net:
    """Uniform training/inference interface over the compared models."""

    def __init__(
        self,
        name: str,
        roi: int,
        patch: int,
        final: Path | None,
        seed: int,
        feature_size: int = 16,
        skip_source: str = "image",
        fp32_max_voxels: int = 0,
    ) -> None:
        import torch

        from mrfound.utils.precision import small_convs_in_fp32

        torch.manual_seed(seed)
        self.name = name
        self.roi = roi
        if name.startswith("mrfound"):
            from mrfound.models.heads import Segmenter, make_segmentation_head, param_groups_layer_decay

            enc = restricted_encoder(final if name == "mrfound" else None, ("t2",), roi, patch)
            head = make_segmentation_head(enc, feature_size=feature_size, skip_source=skip_source)
            self.module = Segmenter(enc, head)
            self.groups = param_groups_layer_decay(self.module, 0.05, 0.75 if name == "mrfound" else 1.0)
        else:
            from monai.losses import DiceCELoss
            from monai.networks.nets import UNETR, UNet

            if name == "unet":
                self.module = UNet(
                    spatial_dims=3,
                    in_channels=1,
                    out_channels=2,
                    channels=(16, 32, 64, 128, 256),
                    strides=(2, 2, 2, 2),
                    num_res_units=2,
                    norm="instance",
                )
            else:
                self.module = UNETR(
                    in_channels=1,
                    out_channels=2,
                    img_size=(roi,) * 3,
                    feature_size=16,
                    hidden_size=192,
                    mlp_dim=768,
                    num_heads=3,
                    proj_type="conv",
                    norm_name="instance",
                )
            self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
            self.groups = [{"params": list(self.module.parameters()), "lr_scale": 1.0, "weight_decay": 0.05}]
        if fp32_max_voxels > 0:  # bf16 conv backward on tiny inputs faults on some CPUs
            small_convs_in_fp32(self.module, fp32_max_voxels)

    def loss(self, image, mask):
        import torch

        if self.name.startswith("mrfound"):
            available = torch.ones(image.shape[0], 1, dtype=torch.bool)
            return self.module({"image": image, "available": available, "mask": mask})["loss"]
        return self.loss_fn(self.module(image).float(), mask)

    def segment(self, image: np.ndarray, overlap: float = 0.25, mirror: bool = False) -> np.ndarray:
        """Liver mask (uint8) of a whole volume: sliding window (Gaussian blending), optionally averaged
        over the 8 mirrorings of the volume (:func:`mrfound.utils.tta.mirror_average`)."""
        import torch
        from monai.inferers import sliding_window_inference

        from mrfound.utils.tta import mirror_average

        self.module.eval()
        with torch.no_grad():
            x = torch.from_numpy(image)[None]
            if self.name.startswith("mrfound"):
                probs = self.module.segment(
                    x,
                    torch.ones(1, 1, dtype=torch.bool),
                    overlap=overlap,
                    sw_batch_size=2,
                    return_probs=True,
                    mirror=mirror,
                )
            else:

                def window(v: torch.Tensor) -> torch.Tensor:
                    return sliding_window_inference(
                        v,
                        (self.roi,) * 3,
                        2,
                        lambda w: torch.softmax(self.module(w).float(), 1),
                        overlap=overlap,
                        mode="gaussian",
                    )

                probs = mirror_average(window, x) if mirror else window(x)
            labels = probs.argmax(1)[0].numpy()
        self.module.train()
        return (labels == 1).astype(np.uint8)


def train_timed(
    net: _Net, cases: list[dict[str, Any]], seconds: float, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """AdamW with linear warm-up (10 steps) and a cosine decay over the time budget.

    The budget runs on ``args.budget_clock``: ``wall`` (wall-clock seconds) or ``cpu`` (this process's CPU
    seconds, with one torch thread): on a shared machine, other processes that take turns on the core stop
    the CPU clock but not the wall clock, so ``cpu`` keeps the step count of a budget when the core is not
    the run's alone (cache and memory-bandwidth contention from the other core still slow each step).

    A step whose loss or gradient norm is not finite changes no weight and is counted
    (``skipped_nonfinite``): one NaN update would otherwise poison the weights for good and the model
    would score Dice 0 with no sign of why (bf16 autocast did that to the UNet between steps 50 and 100).
    """
    import torch

    bf16 = args.mixed_precision == "bf16"

    groups = [dict(g) for g in net.groups]
    for g in groups:
        g["lr"] = args.lr * g.pop("lr_scale", 1.0)
        g["base_lr"] = g["lr"]
    opt = torch.optim.AdamW(groups, lr=args.lr)
    rng = np.random.default_rng(seed)
    net.module.train()
    clock = time.process_time if getattr(args, "budget_clock", "wall") == "cpu" else time.time
    t0, w0 = clock(), time.time()
    step, skipped, losses = 0, 0, []
    while True:
        elapsed = clock() - t0
        if elapsed >= seconds:
            break
        frac = elapsed / seconds
        scale = min(1.0, (step + 1) / 10) * 0.5 * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * max(scale, 0.01)
        image, mask = sample_batch(
            cases,
            args.roi,
            args.batch_size,
            rng,
            args.intensity_aug,
            args.organ_aug,
            args.spatial_aug,
            tuple(args.organ_scale),
            organ_dark=tuple(getattr(args, "organ_dark", NO_ORGAN_DARK)),
        )
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = net.loss(image, mask)
        opt.zero_grad(set_to_none=True)
        step += 1
        if not torch.isfinite(loss):
            skipped += 1
            continue
        loss.backward()
        if not torch.isfinite(torch.nn.utils.clip_grad_norm_(net.module.parameters(), 1.0)):
            skipped += 1
            continue
        opt.step()
        losses.append(float(loss.detach()))
    if skipped:
        print(f"{net.name}: {skipped} of {step} steps skipped (non-finite loss or gradient)", file=sys.stderr)
    return {
        "steps": step,
        "skipped_nonfinite": skipped,
        "train_s": round(clock() - t0, 1),
        "train_wall_s": round(time.time() - w0, 1),
        "final_loss": float(np.mean(losses[-10:])) if losses else None,
    }


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks (0 when both are empty)."""
    return 2 * float((pred & truth).sum()) / max(float(pred.sum() + truth.sum()), 1.0)


def resolve_overlap(value: str | float, roi: int, patch: int) -> float:
    """``--overlap``: a fraction in [0, 1), or ``auto`` (:func:`mrfound.inference.default_overlap`)."""
    from mrfound.inference import default_overlap

    if str(value) == "auto":
        return default_overlap(roi, patch)
    try:
        overlap = float(value)
    except ValueError:
        raise SystemExit(f"--overlap {value!r}: expected a fraction in [0, 1) or 'auto'") from None
    if not 0.0 <= overlap < 1.0:
        raise SystemExit(f"--overlap {value!r}: expected a fraction in [0, 1) or 'auto'")
    return overlap


def inference_variants(overlap: float, tta: str, roi: int, patch: int) -> dict[str, tuple[float, bool]]:
    """Inference settings scored on every test case: the run's own (``run``) and, from the same trained
    weights, overlap 0.25 and the half-patch-offset overlap (:func:`mrfound.inference.default_overlap`),
    so one run shows what the window overlap is worth for every model. (Mirroring is not in the set: no
    model here trains on mirrored crops, and mirrored inference wrecked them; see ``--tta``.)"""
    from mrfound.inference import default_overlap

    auto = default_overlap(roi, patch)
    return {
        "run": (overlap, tta == "mirror"),
        "overlap 0.25": (0.25, False),
        f"overlap {auto:.3f}": (auto, False),
    }


def evaluate(
    net: _Net,
    cases: list[dict[str, Any]],
    spacing: float,
    postprocess: str = "largest",
    save_dir: Path | None = None,
    variants: dict[str, tuple[float, bool]] | None = None,
) -> list[dict[str, Any]]:
    """Liver Dice / HD95 on the preprocessing grid and Dice on the native grid, per test case.

    ``variants`` (name -> (overlap, mirror)) must hold ``"run"``, the inference behind every metric; the
    others are scored too (post-processed Dice on the grid, ``dice_by_inference``). With ``save_dir``,
    each case's post-processed segmentation is written there as ``<case>.nii.gz`` on its native grid (the
    label map's affine and shape; liver = 1), to be looked at beside the image.
    """
    import nibabel as nib

    from mrfound.data.readers import write_nifti
    from mrfound.finetune.metrics import segmentation_metrics
    from mrfound.inference import keep_largest_foreground, resample_to_grid

    variants = variants or {"run": (0.25, False)}

    def post(labels: np.ndarray) -> np.ndarray:
        return keep_largest_foreground(labels) if postprocess == "largest" else labels

    rows = []
    for c in cases:
        done: dict[tuple[float, bool], np.ndarray] = {}
        for setting in variants.values():
            if setting not in done:
                done[setting] = net.segment(c["image"], overlap=setting[0], mirror=setting[1])
        raw = done[variants["run"]]
        pred = post(raw)
        dice_raw = _dice(raw > 0, c["mask"] > 0)
        m = segmentation_metrics(pred, c["mask"], spacing=spacing, class_names={1: "liver"})
        native = (
            resample_to_grid(pred, c["affine"], c["native_affine"], c["native_shape"], nearest=True) > 0.5
        )
        dice_native = _dice(native, np.asarray(nib.load(str(c["mask_path"])).dataobj) == 1)
        if save_dir is not None:
            write_nifti(save_dir / f"{c['case']}.nii.gz", native, c["native_affine"], dtype=np.uint8)
        rows.append(
            {
                "case": c["case"],
                "dice": m["liver"]["dice"],
                "dice_raw": dice_raw,
                "hd95_mm": m["liver"]["hd95"],
                "dice_native": dice_native,
                "dice_by_inference": {
                    name: _dice(post(done[setting]) > 0, c["mask"] > 0)
                    for name, setting in variants.items()
                    if name != "run"
                },
            }
        )
    return rows


def phantom_predict(args: argparse.Namespace, work: Path, final: Path) -> dict[str, Any]:
    """End-to-end check of ``mrfound finetune --task segment`` + ``mrfound predict`` on held-out phantoms.

    The pretrained checkpoint is fine-tuned (liver + lesion) on simulated cases, ``mrfound predict`` writes
    the held-out cases' segmentations on their reference grids, and each file is compared with the
    phantom's mask on the mask's own grid (the prediction resampled there if the grids differ).
    """
    import nibabel as nib
    import pandas as pd
    from sklearn.model_selection import GroupShuffleSplit

    from mrfound.cli import main as cli
    from mrfound.data.phantom import PhantomConfig, generate_cohort
    from mrfound.inference import resample_to_grid
    from mrfound.utils.io import atomic_write_text

    t0 = time.time()
    cohort = work / f"phantom_seg_{args.phantom_seg_cases}"
    if not (cohort / "manifest.csv").is_file():
        generate_cohort(
            cohort,
            args.phantom_seg_cases,
            seed=args.seed + 7,
            config=PhantomConfig(spacing_scale=1.5),
            workers=1,
        )
    frame = pd.read_csv(cohort / "manifest.csv", dtype=str, keep_default_na=False)
    tr, te = next(
        GroupShuffleSplit(1, test_size=0.25, random_state=args.seed).split(frame, groups=frame["subject"])
    )
    atomic_write_text(cohort / "train.csv", frame.iloc[sorted(tr)].to_csv(index=False))
    atomic_write_text(cohort / "test.csv", frame.iloc[sorted(te)].to_csv(index=False))
    suffix = "" if args.skip_source == "tokens" and args.feature_size == 16 else f"_{args.skip_source}"
    suffix += "" if args.feature_size == 16 else f"_fs{args.feature_size}"
    suffix += "" if args.foreground == "otsu" else f"_{args.foreground}"  # the checkpoint's preprocessing
    run = work / f"phantom_seg_finetune_n{args.phantom_predict_steps}{suffix}"
    if not (run / "final" / "model.safetensors").is_file():
        rc = cli(
            [
                "finetune",
                "--task",
                "segment",
                "--checkpoint",
                str(final),
                "--manifest",
                str(cohort / "train.csv"),
                "--val-fraction",
                "0",
                "--steps",
                str(args.phantom_predict_steps),
                "--batch-size",
                str(args.batch_size),
                "--lr",
                str(args.lr),
                "--skip-source",
                args.skip_source,
                "--feature-size",
                str(args.feature_size),
                "--out",
                str(run),
            ]
        )
        if rc != 0:
            raise SystemExit(f"mrfound finetune failed with exit code {rc}")
    t_ft = time.time() - t0
    pred = work / f"phantom_seg_predict{suffix}"
    rc = cli(
        [
            "predict",
            "--checkpoint",
            str(run / "final"),
            "--manifest",
            str(cohort / "test.csv"),
            "--out",
            str(pred),
            *(["--largest-component"] if args.postprocess == "largest" else []),
        ]
    )
    if rc != 0:
        raise SystemExit(f"mrfound predict failed with exit code {rc}")
    table = pd.read_csv(pred / "predictions.csv", dtype=str)
    rows = []
    for r in table.itertuples():
        src = frame.loc[frame["case"] == r.case].iloc[0]
        seg = nib.load(str(pred / r.segmentation))
        ref = nib.load(str(cohort / src[r.reference_sequence]))
        mask_img = nib.load(str(cohort / src["mask"]))
        labels = np.asarray(seg.dataobj)
        if mask_img.shape != seg.shape or not np.allclose(mask_img.affine, seg.affine, atol=1e-4):
            labels = resample_to_grid(labels, seg.affine, mask_img.affine, mask_img.shape, nearest=True)
        truth = np.asarray(mask_img.dataobj)
        truth = np.where(truth == 3, 2, truth)
        row = {
            "case": r.case,
            "reference": r.reference_sequence,
            "grid_matches_reference": bool(seg.shape == ref.shape and np.allclose(seg.affine, ref.affine)),
        }
        for lab, name in ((1, "liver"), (2, "lesion")):
            row[f"{name}_dice"] = _dice(labels == lab, truth == lab)
        rows.append(row)
    return {
        "train_cases": int(len(tr)),
        "test_cases": int(len(te)),
        "finetune_steps": args.phantom_predict_steps,
        "skip_source": args.skip_source,
        "feature_size": args.feature_size,
        "postprocess": args.postprocess,
        "liver_dice_mean": _mean([r["liver_dice"] for r in rows]),
        "lesion_dice_mean": _mean([r["lesion_dice"] for r in rows]),
        "all_on_reference_grid": all(r["grid_matches_reference"] for r in rows),
        "cases": rows,
        "finetune_s": round(t_ft, 1),
        "wall_s": round(time.time() - t0, 1),
        "loadavg": _load(),
    }


def _mean(vals: list[Any]) -> float | None:
    v = [float(x) for x in vals if x is not None and np.isfinite(float(x))]
    return float(np.mean(v)) if v else None


def markdown(result: dict[str, Any]) -> str:
    """Table: per model, Dice / HD95 mean ± sd over folds and per fold."""
    runs = result.get("runs") or [result]
    loads = "; ".join(f"{r['loadavg_start']} -> {r['loadavg_end']}" for r in runs)
    lines = [
        f"CHAOS T2 liver segmentation, {result['folds']}-fold CV over subjects, "
        f"{result['minutes_per_fold']} min training per model per fold"
        f"{' (CPU time)' if result.get('budget_clock') == 'cpu' else ''} "
        f"({result.get('mixed_precision', 'no')} autocast), spacing {result['spacing']} mm, "
        f"ROI {result['roi']}^3, foreground {result.get('foreground', 'otsu')}, "
        f"mrfound decoder skips from {result.get('skip_source', 'tokens')}, "
        f"mrfound decoder feature size {result.get('feature_size', 16)}, "
        f"intensity augmentation {result.get('intensity_aug', 0.0)}, "
        f"organ contrast augmentation {result.get('organ_aug', 0.0)} "
        f"(gain {'-'.join(str(g) for g in result.get('organ_scale', DEFAULT_ORGAN_SCALE))}"
        f"{_dark_text(result.get('organ_dark'), result.get('organ_scale', DEFAULT_ORGAN_SCALE))}), "
        f"spatial augmentation {result.get('spatial_aug', 0.0)}, "
        f"inference overlap {result.get('overlap', 0.25):.3f}, test-time augmentation "
        f"{result.get('tta', 'none')}, "
        f"post-processing: {result.get('postprocess', 'none')}{_pretraining_text(result.get('pretraining'))} "
        f"(load average {loads}).",
        "",
        "| model | Dice (grid) | Dice before post-processing | Dice (native grid) | HD95 mm | steps/fold "
        "| Dice per fold |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in result["summary"].items():
        folds = ", ".join(f"{d:.3f}" if d is not None else "n/a" for d in s["dice_per_fold"])
        lines.append(
            f"| {name} | {_pm(s['dice_mean'], s['dice_sd'])} | {_pm(s.get('dice_raw_mean'), None)} | "
            f"{_pm(s['dice_native_mean'], None)} | "
            f"{_pm(s['hd95_mean'], s['hd95_sd'], 1)} | {s['steps_mean']:.0f} | {folds} |"
        )
    variants = {
        n: s["dice_by_inference_mean"] for n, s in result["summary"].items() if "dice_by_inference_mean" in s
    }
    if variants:
        lines += ["", "Mean Dice of the same trained models under other inference settings (post-processed):"]
        lines += [
            f"- {n}: " + ", ".join(f"{v} {_pm(d, None)}" for v, d in by.items()) for n, by in variants.items()
        ]
    skipped = {n: s["skipped_nonfinite"] for n, s in result["summary"].items() if s.get("skipped_nonfinite")}
    if skipped:
        lines += ["", f"Training steps skipped for a non-finite loss or gradient: {skipped}."]
    if result.get("replaced"):
        lines.append("")
    for r in result.get("replaced", []):
        lines.append(f"Fold {r['fold']} of {r['model']}: from {r['by']}, a rerun (replaces {r['replaced']}).")
    commands = [r["command"] for r in result.get("runs", [])] + [result["command"]]
    lines += ["", "Command(s): " + "; then ".join(f"`{c}`" for c in commands), ""]
    return "\n".join(lines)


def _dark_text(dark: Any, scale: list[float]) -> str:
    """The ``--organ-dark`` part of the settings line (empty when off or not recorded)."""
    if not isinstance(dark, list | tuple) or len(dark) != 2 or not dark[0]:
        return ""
    return f"; {100 * dark[0]:g} % of those crops {dark[1]}-{scale[0]}"


def _pretraining_text(info: dict[str, Any] | None) -> str:
    if not info:
        return ""
    return (
        f", mrfound pretrained {info['steps']} steps on {info.get('phantom_cases', 24)} phantom cases + "
        f"{info.get('chaos_cases_unlabelled', 15)} unlabelled CHAOS volumes"
    )


def _pm(m: float | None, sd: float | None, digits: int = 3) -> str:
    if m is None:
        return "n/a"
    return f"{m:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def main() -> None:
    from mrfound.data.preprocess import FOREGROUND_METHODS, PreprocessConfig
    from mrfound.models.config import SKIP_SOURCES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "chaos_t2"))
    ap.add_argument("--work", default=str(REPO / "results" / "tmp" / "chaos"), help="work folder (reused)")
    ap.add_argument("--out", default=str(REPO / "results"), help="folder for the JSON and markdown")
    ap.add_argument(
        "--minutes-per-fold", type=float, default=3.0, help="training budget per model per fold (3)"
    )
    ap.add_argument(
        "--budget-clock",
        choices=("wall", "cpu"),
        default="wall",
        help="clock of --minutes-per-fold: wall-clock, or this process's CPU time (needs --threads 1; "
        "other processes sharing the core then do not eat the budget) (wall)",
    )
    ap.add_argument("--spacing", type=float, default=4.0, help="isotropic grid spacing in mm (4)")
    ap.add_argument(
        "--foreground",
        choices=FOREGROUND_METHODS,
        default=PreprocessConfig().foreground,
        help="preprocessing foreground threshold, pretraining and segmentation (log_otsu: raw Otsu clips "
        "the dark liver of fat-suppressed T2 to 0 in some subjects)",
    )
    ap.add_argument(
        "--intensity-aug",
        type=float,
        default=0.0,
        help="share of training crops given a random gamma and gain, every model (0)",
    )
    ap.add_argument(
        "--organ-aug",
        type=float,
        default=0.0,
        help="share of training crops whose liver gets its own random gain (--organ-scale), every model (0)",
    )
    ap.add_argument(
        "--organ-scale",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=list(DEFAULT_ORGAN_SCALE),
        help="log-uniform range of that liver gain (%(default)s)",
    )
    ap.add_argument(
        "--organ-dark",
        type=float,
        nargs=2,
        metavar=("SHARE", "LOW"),
        default=list(NO_ORGAN_DARK),
        help="that share of the liver-gain crops draws the gain in LOW..(--organ-scale's low) instead "
        "(0 0.2: none)",
    )
    ap.add_argument(
        "--spatial-aug",
        type=float,
        default=0.0,
        help="share of training crops rotated (+-15 deg per axis) and zoomed (0.85-1.15) with their labels, "
        "every model (0)",
    )
    ap.add_argument("--roi", type=int, default=32, help="crop / window edge in voxels (32)")
    ap.add_argument("--patch", type=int, default=8, help="mrfound patch size (8)")
    ap.add_argument("--feature-size", type=int, default=16, help="mrfound decoder width at full resolution")
    ap.add_argument(
        "--skip-source", choices=SKIP_SOURCES, default="image", help="mrfound decoder skips (image)"
    )
    ap.add_argument(
        "--mixed-precision", choices=("no", "bf16"), default="no", help="training autocast, every model (no)"
    )
    ap.add_argument(
        "--postprocess",
        choices=("largest", "none"),
        default="largest",
        help="keep the largest connected component of every model's segmentation (largest)",
    )
    ap.add_argument(
        "--overlap",
        default="0.25",
        help="sliding-window overlap of every model's inference, or 'auto': the stride an odd multiple of "
        "half an mrfound patch (mrfound.inference.default_overlap; 0.609 at ROI 32, patch 8) (0.25)",
    )
    ap.add_argument(
        "--tta",
        choices=("none", "mirror"),
        default="none",
        help="test-time augmentation of every model: 'mirror' averages the probabilities over the 8 "
        "mirrorings of each volume; only for models trained on mirrored crops, which these are not (fold 0, "
        "commit 19197a3: mrfound Dice 0.13, UNet 0.42: mirrored volumes are outside their training) (none)",
    )
    ap.add_argument(
        "--fp32-max-voxels",
        type=int,
        default=8,
        help="under bf16, run every convolution whose input has at most this many voxels in fp32 (8: the "
        "UNet's 2x2x2 bottleneck, whose bf16 backward faults on some CPUs; 0 = none)",
    )
    ap.add_argument("--tag", default="", help="write chaos_segmentation.TAG.{json,md} (parallel runs)")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="combine tagged runs into the report")
    ap.add_argument("--batch-size", type=int, default=4, help="crops per step, every model (4)")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, every model (1e-3)")
    ap.add_argument("--pretrain-steps", type=int, default=1000, help="pretraining steps (1000)")
    ap.add_argument(
        "--phantom-cases", type=int, default=24, help="simulated cases for pretraining (24; 0 = CHAOS only)"
    )
    ap.add_argument("--models", default="mrfound,unet,unetr", help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--max-folds", type=int, default=None, help="run only the first N folds (smoke tests)")
    ap.add_argument("--only-fold", type=int, default=None, help="run only fold K (0-based; checks)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: 1 if the machine is busy)"
    )
    ap.add_argument(
        "--phantom-predict-steps",
        type=int,
        default=150,
        help="fine-tuning steps of the phantom predict check (0 = skip it)",
    )
    ap.add_argument("--phantom-seg-cases", type=int, default=16, help="phantom cases of that check (16)")
    ap.add_argument("--skip-chaos", action="store_true", help="only the phantom predict check")
    ap.add_argument(
        "--save-predictions",
        default=None,
        metavar="DIR",
        help="write every test case's segmentation to DIR/<model>/<case>.nii.gz (native grid)",
    )
    args = ap.parse_args()
    command = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
    args.overlap = resolve_overlap(args.overlap, args.roi, args.patch)
    if args.merge:
        merge_runs([Path(f) for f in args.merge], Path(args.out), command)
        return
    data = Path(args.data)
    if not (data / "images").is_dir():
        print(json.dumps({"skipped": f"{data} is absent (see ../shared/data/README.md)", "command": command}))
        return
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad:
        raise SystemExit(f"unknown model(s) {bad}; choose from {', '.join(MODELS)}")
    if args.phantom_cases < 0:
        raise SystemExit(f"--phantom-cases must be >= 0, got {args.phantom_cases}")

    from mrfound.utils.machine import machine_info

    if resolve_autocast(args.mixed_precision) != args.mixed_precision:
        # a wall-clock budget spent on emulated bf16 (~9x slower than fp32) would measure the emulation
        raise SystemExit(
            f"--mixed-precision {args.mixed_precision}: this CPU only emulates it (no AVX512-BF16/AMX); "
            "use --mixed-precision no"
        )
    if choose_threads(args.threads) != 1 and args.budget_clock == "cpu":
        raise SystemExit("--budget-clock cpu needs --threads 1 (CPU time sums over threads)")
    from sklearn.model_selection import KFold

    t_start = time.time()
    load_start = _load()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    labelled, unlabelled = build_manifests(data, work)
    final, pre_info = (None, None)
    if "mrfound" in models or args.phantom_predict_steps:
        final, pre_info = pretrain_encoder(args, work, unlabelled)
    if args.phantom_predict_steps:
        from mrfound.utils.io import atomic_write_json

        check = {"command": command, "pretraining": pre_info, **phantom_predict(args, work, final)}
        atomic_write_json(Path(args.out) / "predict_phantom.json", check)
        print(json.dumps({k: v for k, v in check.items() if k != "cases"}), file=sys.stderr, flush=True)
    if args.skip_chaos:
        return
    cases = load_cases(labelled, args.spacing, args.roi, work / "cache_seg", args.foreground)
    folds = list(KFold(args.folds, shuffle=True, random_state=args.seed).split(np.arange(len(cases))))
    if args.max_folds:
        folds = folds[: args.max_folds]
    fold_ids = list(range(len(folds)))
    if args.only_fold is not None:
        if not 0 <= args.only_fold < len(folds):
            raise SystemExit(f"--only-fold {args.only_fold} is outside 0..{len(folds) - 1}")
        fold_ids = [args.only_fold]
    per_fold: list[dict[str, Any]] = []
    for k in fold_ids:
        tr, te = folds[k]
        train = [cases[i] for i in tr]
        test = [cases[i] for i in te]
        fold: dict[str, Any] = {"fold": k, "test": [c["case"] for c in test], "models": {}}
        for name in models:
            net = _Net(
                name,
                args.roi,
                args.patch,
                final,
                args.seed + k,
                args.feature_size,
                args.skip_source,
                args.fp32_max_voxels,
            )
            tr_info = train_timed(net, train, args.minutes_per_fold * 60, args, seed=args.seed * 100 + k)
            t_eval = time.time()
            rows = evaluate(
                net,
                test,
                args.spacing,
                args.postprocess,
                Path(args.save_predictions) / name if args.save_predictions else None,
                inference_variants(args.overlap, args.tta, args.roi, args.patch),
            )
            fold["models"][name] = {
                **tr_info,
                "eval_s": round(time.time() - t_eval, 1),
                "dice": _mean([r["dice"] for r in rows]),
                "dice_raw": _mean([r["dice_raw"] for r in rows]),
                "hd95_mm": _mean([r["hd95_mm"] for r in rows]),
                "dice_native": _mean([r["dice_native"] for r in rows]),
                "dice_by_inference": {
                    v: _mean([r["dice_by_inference"][v] for r in rows]) for v in rows[0]["dice_by_inference"]
                },
                "cases": rows,
                "loadavg": _load(),
            }
            print(
                json.dumps(
                    {
                        "fold": k,
                        "model": name,
                        **{
                            x: fold["models"][name][x]
                            for x in (
                                "steps",
                                "dice",
                                "dice_raw",
                                "hd95_mm",
                                "dice_native",
                                "dice_by_inference",
                            )
                        },
                    }
                ),
                file=sys.stderr,
                flush=True,
            )
            del net
        per_fold.append(fold)
    result = {
        "benchmark": "chaos_segmentation",
        "command": command,
        "machine": machine_info(),
        "loadavg_start": load_start,
        "loadavg_end": _load(),
        "folds": len(per_fold),
        **{key: getattr(args, key) for key in SETTINGS},
        "pretraining": pre_info,
        "target_mean_dice": 0.90,
        "per_fold": per_fold,
        "wall_s": round(time.time() - t_start, 1),
    }
    write_report(result, Path(args.out), args.tag)


SETTINGS = (
    "minutes_per_fold",
    "budget_clock",
    "spacing",
    "foreground",
    "intensity_aug",
    "organ_aug",
    "organ_scale",
    "organ_dark",
    "spatial_aug",
    "roi",
    "patch",
    "feature_size",
    "skip_source",
    "mixed_precision",
    "fp32_max_voxels",
    "overlap",
    "tta",
    "postprocess",
    "batch_size",
    "lr",
    "seed",
)
"""Run settings recorded in the JSON; tagged runs merge only when all of them agree (the
``MRFOUND_SETTINGS`` only among the runs that include an mrfound model)."""
MRFOUND_SETTINGS = ("feature_size", "skip_source")
"""Settings of the mrfound segmentation head: they do not change the MONAI models' runs."""
SETTING_DEFAULTS = {
    "budget_clock": "wall",
    "intensity_aug": 0.0,
    "organ_aug": 0.0,
    "organ_scale": list(DEFAULT_ORGAN_SCALE),
    "organ_dark": list(NO_ORGAN_DARK),
    "spatial_aug": 0.0,
    "fp32_max_voxels": 0,
    "overlap": 0.25,
    "tta": "none",
}
"""Values of settings added after a run was recorded (its JSON lacks the key)."""
PRETRAINING_DEFAULTS = {"mixed_precision": "no"}
"""Values of pretraining facts added after a run was recorded (its ``pretraining`` lacks the key)."""


def summarise(per_fold: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: Dice / HD95 mean, sd and per fold, over the folds."""
    models = list(dict.fromkeys(m for f in per_fold for m in f["models"]))
    summary = {}
    for name in models:
        d = [f["models"][name]["dice"] for f in per_fold]
        h = [f["models"][name]["hd95_mm"] for f in per_fold]
        dn = [f["models"][name]["dice_native"] for f in per_fold]
        dv = [x for x in d if x is not None]
        hv = [x for x in h if x is not None]
        summary[name] = {
            "dice_mean": _mean(d),
            "dice_sd": float(np.std(dv)) if dv else None,
            "dice_per_fold": d,
            "hd95_mean": _mean(h),
            "hd95_sd": float(np.std(hv)) if hv else None,
            "hd95_per_fold": h,
            "dice_raw_mean": _mean([f["models"][name].get("dice_raw") for f in per_fold]),
            "dice_native_mean": _mean(dn),
            "steps_mean": float(np.mean([f["models"][name]["steps"] for f in per_fold])),
            "skipped_nonfinite": int(sum(f["models"][name].get("skipped_nonfinite", 0) for f in per_fold)),
        }
        by_inf = [f["models"][name].get("dice_by_inference") for f in per_fold]
        if all(by_inf):  # older runs lack it
            summary[name]["dice_by_inference_mean"] = {v: _mean([b[v] for b in by_inf]) for v in by_inf[0]}
    return summary


def write_report(result: dict[str, Any], out: Path, tag: str = "") -> None:
    """Add the summary and target check, write ``chaos_segmentation[.TAG].{json,md}``, print the JSON."""
    from mrfound.utils.io import atomic_write_json, atomic_write_text

    result["summary"] = summarise(result["per_fold"])
    mr = result["summary"].get("mrfound")
    result["target_met"] = None if mr is None else (mr["dice_mean"] or 0.0) >= result["target_mean_dice"]
    stem = "chaos_segmentation" + (f".{tag}" if tag else "")
    atomic_write_json(out / f"{stem}.json", result)
    atomic_write_text(out / f"{stem}.md", markdown(result))
    print(json.dumps({k: v for k, v in result.items() if k != "per_fold"}, indent=2))


def merge_runs(files: list[Path], out: Path, command: str) -> None:
    """Combine runs of different models, or of different folds (``--only-fold``), into one report.

    A fold of a model that a later file also holds (a rerun) is taken from the later file; the report's
    ``replaced`` list and markdown say which.

    Runs must share the settings, the CPU (model name and native bf16, where both record them: a
    wall-clock budget buys different step counts on different CPUs) and, fold by fold, the test
    subjects; the runs with the pretrained ``mrfound`` model must share its pretraining (steps, phantom
    cases, autocast).
    """
    runs = [json.loads(f.read_text()) for f in files]
    first = runs[0]

    def setting(run: dict[str, Any], key: str) -> Any:
        return run.get(key, SETTING_DEFAULTS.get(key))

    def has_mrfound(run: dict[str, Any], pretrained_only: bool = False) -> bool:
        names = {m for fo in run["per_fold"] for m in fo["models"]}
        return any(m == "mrfound" or (not pretrained_only and m.startswith("mrfound")) for m in names)

    def check(pairs: list[tuple[Path, dict[str, Any]]], keys: tuple[str, ...], get: Any) -> None:
        for f, r in pairs[1:]:
            for key in keys:
                if get(r, key) != get(pairs[0][1], key):
                    raise SystemExit(
                        f"{f}: {key} = {get(r, key)!r} differs from {pairs[0][0]}'s {get(pairs[0][1], key)!r}"
                    )

    check(list(zip(files, runs)), tuple(k for k in SETTINGS if k not in MRFOUND_SETTINGS), setting)
    # a VM may name only the family ("AMD EPYC"), so native bf16 is compared too
    recorded = [(f, r) for f, r in zip(files, runs) if "cpu_model" in r["machine"]]
    check(recorded, ("cpu_model", "native_bf16"), lambda r, k: r["machine"].get(k))
    ours = [(f, r) for f, r in zip(files, runs) if has_mrfound(r)]
    check(ours, MRFOUND_SETTINGS, setting)
    pretrained = [(f, r) for f, r in zip(files, runs) if has_mrfound(r, pretrained_only=True)]
    check(
        pretrained,
        ("steps", "phantom_cases", "mixed_precision"),
        lambda r, k: (r.get("pretraining") or {}).get(k, PRETRAINING_DEFAULTS.get(k)),
    )
    by_fold: dict[int, dict[str, Any]] = {}
    source: dict[tuple[int, str], str] = {}
    replaced: list[dict[str, Any]] = []
    for f, r in zip(files, runs):
        for fo in r["per_fold"]:
            merged = by_fold.setdefault(fo["fold"], {"fold": fo["fold"], "test": fo["test"], "models": {}})
            if merged["test"] != fo["test"]:
                raise SystemExit(f"{f}: fold {fo['fold']}'s test subjects differ from an earlier run's")
            for name in fo["models"]:  # a later run's fold (a rerun) replaces an earlier one, on the record
                key = (fo["fold"], name)
                if key in source:
                    replaced.append({"fold": key[0], "model": name, "by": f.name, "replaced": source[key]})
                source[key] = f.name
            merged["models"].update(fo["models"])
    per_fold = [by_fold[k] for k in sorted(by_fold)]
    models = {m for fo in per_fold for m in fo["models"]}
    for fo in per_fold:
        if set(fo["models"]) != models:
            missing = sorted(models - set(fo["models"]))
            raise SystemExit(f"fold {fo['fold']} lacks {missing}: merge runs that cover every fold")
    result = {
        **{k: v for k, v in first.items() if k not in ("summary", "target_met", "per_fold")},
        "command": command,
        "runs": [
            {
                "file": f.name,
                "command": r["command"],
                "wall_s": r["wall_s"],
                "machine": r["machine"],
                "loadavg_start": r["loadavg_start"],
                "loadavg_end": r["loadavg_end"],
            }
            for f, r in zip(files, runs)
        ],
        **({k: ours[0][1][k] for k in MRFOUND_SETTINGS if k in ours[0][1]} if ours else {}),
        "pretraining": pretrained[0][1].get("pretraining") if pretrained else None,
        "folds": len(per_fold),
        "per_fold": per_fold,
        "replaced": replaced,
        "wall_s": max(r["wall_s"] for r in runs),
    }
    write_report(result, out)


if __name__ == "__main__":
    main()
