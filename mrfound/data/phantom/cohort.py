"""Cases and cohorts: seeding, subjects, per-case simulation, and writing NIfTI + manifest.

Determinism: case ``i`` of seed ``s`` depends only on ``(s, i)`` and the config (numpy
``SeedSequence(s, spawn_key=...)``), never on the number of cases or worker processes; a cohort of 80
is the first 80 cases of a cohort of 240. Cases come in blocks of two: with probability
``p_second_exam`` both cases of a block belong to one subject (same centre, anatomy, liver fat and
enhancement physiology; second lesion or follow-up exam, often of the same class), so splits must
group by subject.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import os
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mrfound.data.phantom import acquisition as acq
from mrfound.data.phantom import anatomy as anat
from mrfound.data.phantom import lesions as les
from mrfound.data.sequences import CLASSES, SEQUENCES
from mrfound.errors import ConfigError, MrfoundError

MANIFEST_COLUMNS: tuple[str, ...] = ("case", "subject", "center", "label", *SEQUENCES, "mask",
                                     "lesion_x", "lesion_y", "lesion_z", "lesion_diameter_mm")
"""Columns of the written manifest (DESIGN §3 plus the lesion diameter as an extra column)."""


@dataclass(frozen=True)
class PhantomConfig:
    """Everything (besides seed and case index) a simulated case depends on.

    Args:
        centers: Centre names or :class:`CenterProfile` objects; ``None`` = all built-in centres.
        classes: Classes to simulate (keys of ``signatures``).
        unlabeled_fraction: Fraction of cases whose label is left empty (pretraining-only cases).
        anatomy_dir: Folder of real organ label maps (1 liver, 2/3 kidneys, 4 spleen); ``None`` draws
            synthetic anatomy.
        world_spacing: Spacing (mm) of the world grid the phantom is evaluated on.
        spacing_scale: Multiplies every voxel size (> 1: coarser, smaller, faster volumes for tests).
        fov_scale: Multiplies every field of view.
        variation: Multiplies every per-case spread of the signature table (0 = table means).
        variants: Allow atypical lesion presentations (flash-filling haemangioma, ...).
        textbook: Typical presentations only: no variants, optional features (capsule, scar, fat,
            necrosis, halo) present exactly when the table calls them typical, no liver steatosis. For
            tests of the table and figures.
        balanced: Cycle through ``classes`` (case i gets class i mod n) instead of each centre's mix.
        p_second_exam: Probability that a block of two cases belongs to one subject.
        p_missing: Per-sequence probability of a missing sequence (``None``: each centre's value).
        diameter_range: Override of every class's (min, max) target lesion diameter (mm).
        signatures: Alternative signature table (default :data:`lesions.SIGNATURES`).
        id_prefix: Prepended to every case and subject id (``u`` -> ``uph00000``, ``usub00000``), so
            cohorts of other seeds can be pooled (``mrfound pretrain --manifest A --manifest B`` needs
            unique case ids, and a subject id shared by two cohorts would be one patient to the splits).
    """

    centers: tuple | None = None
    classes: tuple[str, ...] = CLASSES
    unlabeled_fraction: float = 0.0
    anatomy_dir: str | None = None
    world_spacing: float = 2.0
    spacing_scale: float = 1.0
    fov_scale: float = 1.0
    variation: float = 1.0
    variants: bool = True
    textbook: bool = False
    balanced: bool = False
    p_second_exam: float = 0.12
    p_missing: float | None = None
    diameter_range: tuple[float, float] | None = None
    signatures: dict | None = None
    id_prefix: str = ""

    def validate(self) -> PhantomConfig:
        """Check ranges and names; returns self. Raises ConfigError."""
        acq.get_centers(self.centers)
        table = self.signatures or les.SIGNATURES
        for c in self.classes:
            if c not in table:
                raise ConfigError(f"class {c!r} has no signature; known: {', '.join(table)}")
        if not self.classes:
            raise ConfigError("no class to simulate")
        if not 0.0 <= self.unlabeled_fraction <= 1.0:
            raise ConfigError(f"--unlabeled-fraction must be in [0, 1], got {self.unlabeled_fraction}")
        if not 0.5 <= self.world_spacing <= 6.0:
            raise ConfigError(f"world_spacing must be in [0.5, 6] mm, got {self.world_spacing}")
        if not 0.25 <= self.spacing_scale <= 6.0:
            raise ConfigError(f"spacing_scale must be in [0.25, 6], got {self.spacing_scale}")
        if self.variation < 0:
            raise ConfigError(f"variation must be >= 0, got {self.variation}")
        if not re.fullmatch(r"[A-Za-z0-9_-]*", self.id_prefix):
            raise ConfigError(f"--id-prefix may hold letters, digits, _ and - only, got {self.id_prefix!r}")
        if self.anatomy_dir is not None:
            anat.list_label_maps(self.anatomy_dir)
        return self


@dataclass(frozen=True)
class CaseSpec:
    """The cohort-level plan of one case (cheap to compute, no images)."""

    index: int
    case: str
    subject: str
    exam: int
    center: str
    cls: str
    labeled: bool
    subject_key: int


@dataclass
class PhantomCase:
    """A simulated exam in memory.

    Attributes:
        case, subject, center: Manifest identifiers.
        label: Class name, or ``None`` for an unlabeled case.
        true_class: The simulated class (also for unlabeled cases).
        images: Sequence -> (int16 array, 4x4 affine), each on its own grid; only acquired sequences.
        mask: (uint8 label map, affine) on the grid of ``mask_sequence``: 0 bg, 1 liver, 2 target, 3 other.
        mask_sequence: Sequence whose grid the mask shares.
        lesion_xyz: Target lesion centre, world mm (RAS, the affines' frame).
        lesion_diameter_mm: Target lesion mean diameter.
        info: Simulation details (variant, arterial timing, fat fractions, b-value, anatomy source...).
    """

    case: str
    subject: str
    center: str
    label: str | None
    true_class: str
    images: dict[str, tuple[np.ndarray, np.ndarray]]
    mask: tuple[np.ndarray, np.ndarray]
    mask_sequence: str
    lesion_xyz: tuple[float, float, float]
    lesion_diameter_mm: float
    info: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------- seeds
def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=tuple(int(k) for k in key)))


_PAIR, _SUBJECT, _CASE, _LABEL, _CLASS, _ANATOMY = 0, 1, 2, 3, 4, 5


def _case_class(index: int, seed: int, center: acq.CenterProfile, config: PhantomConfig) -> str:
    classes = list(config.classes)
    if config.balanced:
        return classes[index % len(classes)]
    w = np.array([max(float(center.class_weights.get(c, 0.0)), 0.0) for c in classes])
    if w.sum() <= 0:
        w = np.ones(len(classes))
    return classes[int(_rng(seed, index, _CLASS).choice(len(classes), p=w / w.sum()))]


def plan_case(index: int, seed: int, config: PhantomConfig) -> CaseSpec:
    """Identifiers, centre, class and label status of case ``index`` (depends only on seed and index)."""
    if index < 0:
        raise ConfigError(f"case index must be >= 0, got {index}")
    centers = acq.get_centers(config.centers)
    block = index // 2
    paired = _rng(seed, block, _PAIR).random() < config.p_second_exam
    subject_index = 2 * block if paired else index
    srng = _rng(seed, subject_index, _SUBJECT)
    center = centers[int(srng.integers(len(centers)))]
    cls = _case_class(index, seed, center, config)
    if paired and index % 2 == 1 and not config.balanced:
        # a second lesion / follow-up of the same subject: often the same disease
        first = _case_class(index - 1, seed, center, config)
        if _rng(seed, index, _CLASS, 1).random() < 0.6:
            cls = first
    labeled = _rng(seed, index, _LABEL).random() >= config.unlabeled_fraction
    pre = config.id_prefix
    return CaseSpec(index=index, case=f"{pre}ph{index:05d}", subject=f"{pre}sub{subject_index:05d}",
                    exam=1 + (index - subject_index), center=center.name, cls=cls, labeled=labeled,
                    subject_key=subject_index)


def plan_cohort(n_cases: int, seed: int, config: PhantomConfig) -> list[CaseSpec]:
    """:func:`plan_case` for cases ``0 .. n_cases - 1``."""
    return [plan_case(i, seed, config) for i in range(n_cases)]


# ------------------------------------------------------------------------------------------- simulation
def _center(config: PhantomConfig, name: str) -> acq.CenterProfile:
    for c in acq.get_centers(config.centers):
        if c.name == name:
            return c
    return acq.get_centers([name])[0]


def _place(lesion: les.Lesion, depth: np.ndarray, grid: acq.WorldGrid, step: int, rng: np.random.Generator,
           others: Sequence[les.Lesion]) -> bool:
    """Put ``lesion`` where the liver is deep enough; shrinks a lesion too big for this liver."""
    R = lesion.radius
    dmax = float(depth.max())
    if dmax <= 0:
        return False
    R = min(R, dmax / 0.65)
    lesion.radius = max(R, 4.0)
    need = 0.65 * lesion.radius
    cand = np.argwhere(depth >= need)
    for _ in range(40):
        if cand.size == 0:
            return False
        p = grid.origin + grid.spacing * step * cand[int(rng.integers(len(cand)))] + rng.uniform(-1, 1, 3)
        if all(np.linalg.norm(p - o.centre) > lesion.radius + o.radius + 4.0 for o in others):
            lesion.centre = p
            return True
    return False


@dataclass
class _Physiology:
    """Subject- and case-level factors shared by all sequences of an exam."""

    liver_fat: float
    liver_adc: float
    gain: dict
    timing: float
    t2_gain: float


def _world_signal(seq: str, anatomy: anat.Anatomy, lesions: Sequence[les.Lesion], near_liver: np.ndarray,
                  center: acq.CenterProfile, phys: _Physiology) -> list[np.ndarray]:
    """The phantom's signal (liver = 1) for ``seq`` on the world grid; dual echo -> [water, fat]."""
    labels = anatomy.labels
    is_liver = labels == anat.T["liver"]
    tex = anatomy.textures["liver"]
    tex_amp = {"t2": 0.05, "dwi": 0.08, "t1_in": 0.03, "t1_opp": 0.03}.get(seq, 0.035)
    liver_mult = 1.0 + tex_amp * tex * is_liver
    gain = phys.gain.get(seq, 1.0)
    if seq in ("t1_in", "t1_opp"):
        water_lut, fat_lut = anat.dual_echo_luts(phys.liver_fat)
        maps = [np.take(water_lut, labels) * liver_mult, np.take(fat_lut, labels) * liver_mult]
    else:
        lut = anat.tissue_lut(seq, b_value=center.b_value, t2_fat_sat=center.t2_fat_sat,
                              liver_adc=phys.liver_adc, arterial_timing=phys.timing)
        m = np.take(lut, labels) * liver_mult
        if seq == "t1_art":  # splenic moire (arcuate) enhancement, fades in late arterial phase
            amp = 0.35 * max(0.0, 1.0 - 0.8 * phys.timing)
            m *= 1.0 + amp * anatomy.textures["spleen_bands"] * (labels == anat.T["spleen"])
        if seq == "t2":
            m *= phys.t2_gain ** is_liver  # subject's liver T2 (fibrosis, iron): shifts all lesion ratios
        maps = [m]
    lut_seq = "t1_in" if seq in ("t1_in", "t1_opp") else seq
    for lesion in sorted(lesions, key=lambda x: x.target):  # target painted last
        f = les.lesion_fields(lesion, anatomy.grid, near_liver)
        sl = f["sl"]
        inside = f["inside"]
        halo = les.halo_multiplier(lesion, lut_seq, f, gain)
        val = les.lesion_value(lesion, lut_seq, f, b_value=center.b_value, liver_adc=phys.liver_adc,
                               arterial_timing=phys.timing, gain=gain)
        if seq in ("t1_in", "t1_opp"):
            # patchy fat, kept below 0.45: above 0.5 the opposed-phase signal would rise again
            ff = np.clip(lesion.geometry["fat_fraction"] * (1.0 + 0.4 * f["texture"]), 0.0, 0.45)
            parts = [val * (1.0 - ff), val * ff]
        else:
            parts = [val]
        for m, part in zip(maps, parts):
            sub = m[sl]
            if halo is not None:
                sub *= np.where(is_liver[sl], halo, 1.0)
            sub += (part - sub) * inside
    return maps


def _missing(center: acq.CenterProfile, config: PhantomConfig, rng: np.random.Generator,
             mask_seq: str) -> set[str]:
    p = center.p_missing if config.p_missing is None else config.p_missing
    groups = [("t1_in", "t1_opp")] + [(s,) for s in center.sequences if s not in ("t1_in", "t1_opp")]
    missing: set[str] = set()
    for g in groups:
        if all(s in center.protocols for s in g) and rng.random() < p and mask_seq not in g:
            missing.update(g)
    if len(set(center.sequences) - missing) < 2:
        missing = set()
    return missing


def _simulate(spec: CaseSpec, seed: int, config: PhantomConfig) -> PhantomCase:
    center = _center(config, spec.center)
    srng = _rng(seed, spec.subject_key, _ANATOMY)
    crng = _rng(seed, spec.index, _CASE)
    sizes = [p.fov_mm[2] * config.fov_scale for p in center.protocols.values()]
    # subject: anatomy and physiology (shared by the two exams of a subject)
    if config.anatomy_dir:
        files = anat.list_label_maps(config.anatomy_dir)
        path = files[int(srng.integers(len(files)))]
        anatomy = anat.label_map_anatomy(path, srng, spacing=config.world_spacing)
    else:
        anatomy = anat.synthetic_anatomy(srng, spacing=config.world_spacing, fov_si=max(sizes) + 12.0)
    liver_fat = float(srng.uniform(0.05, 0.2)) if srng.random() < 0.25 else 0.0  # steatosis in a quarter
    if config.textbook:
        liver_fat = 0.0
    phys = _Physiology(
        liver_fat=liver_fat,
        liver_adc=float(srng.normal(1.1, 0.1)),
        gain={s: float(math.exp(srng.normal(0, 0.12))) for s in ("t1_art", "t1_pv", "t1_del")},
        timing=float(np.clip(crng.normal(*center.arterial_timing), 0.0, 1.4)),
        t2_gain=float(math.exp(srng.normal(0, 0.06))),
    )
    # lesions
    grid = anatomy.grid
    step = 2
    from scipy import ndimage

    coarse = anatomy.liver[::step, ::step, ::step]
    depth = ndimage.distance_transform_edt(coarse, sampling=grid.spacing * step)
    near_liver = ndimage.binary_dilation(anatomy.liver, iterations=max(1, int(round(4.0 / grid.spacing))))
    target = les.draw_lesion(spec.cls, crng, variation=config.variation, variants=config.variants,
                             textbook=config.textbook,
                             signatures=config.signatures, diameter_range=config.diameter_range, target=True)
    if not _place(target, depth, grid, step, crng, []):
        raise MrfoundError(f"case {spec.case}: no room for a lesion in the liver ({anatomy.source})")
    lesions = [target]
    geo = les.signature(spec.cls, config.signatures)["geometry"]
    if crng.random() < geo["p_other"]:
        for _ in range(int(crng.integers(1, int(geo["max_other"]) + 1))):
            oc = spec.cls if geo["other_class"] == "same" else str(geo["other_class"])
            if crng.random() < 0.3:
                oc = "cyst"  # incidental cysts are common in any liver
            o = les.draw_lesion(oc, crng, variation=config.variation, variants=config.variants,
                                signatures=config.signatures,
                                diameter_range=(8.0, max(10.0, min(25.0, target.diameter_mm))), target=False)
            if _place(o, depth, grid, step, crng, lesions):
                lesions.append(o)
    # acquisition
    mask_seq = next((s for s in center.mask_sequences if s in center.protocols), center.sequences[0])
    missing = _missing(center, config, crng, mask_seq)
    fov_centre = anatomy.fov_centre + crng.normal(0, center.fov_jitter_mm, 3)
    images: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    shifts: dict[str, np.ndarray] = {}
    grids: dict[str, acq.ScannerGrid] = {}
    bias_cache: dict[tuple, np.ndarray] = {}
    for seq in center.sequences:
        proto = center.protocols[seq]
        # dual echo: one acquisition (grid, breath-hold); dynamic phases: one grid, separate breath-holds
        shift = (shifts["t1_in"] if seq == "t1_opp"
                 else np.clip(crng.normal(0, 1, 3), -2, 2) * np.array(proto.shift_mm))
        sgrid = acq.ScannerGrid.from_protocol(proto, fov_centre, config.spacing_scale, config.fov_scale)
        scale = proto.scale * math.exp(crng.normal(0, 0.25))
        shifts[seq], grids[seq] = shift, sgrid
        if seq in missing or seq == "t1_opp":
            continue
        mats = acq.grid_matrices(sgrid, grid, shift, proto)
        maps = _world_signal(seq, anatomy, lesions, near_liver, center, phys)
        sampled = [acq.separable_resample(m, mats, sgrid.world_axis) for m in maps]
        coil = "dyn" if seq.startswith("t1_") and seq not in ("t1_in",) else seq
        key = (coil, sgrid.shape)
        if key not in bias_cache:
            bias_cache[key] = acq.bias_field(sgrid.shape, center.bias, crng)
        bias = bias_cache[key]
        sigma = 1.0 / proto.snr
        if seq == "t1_in":
            water, fat = sampled
            if "t1_opp" not in missing:
                opp = np.abs(water - fat)
                opp *= bias
                opp_snr = center.protocols["t1_opp"].snr
                opp = acq.rician(opp, 1.0 / opp_snr, crng)
                images["t1_opp"] = (acq.to_scanner_units(opp, scale), sgrid.affine)
            water += fat
            sampled = [water]
        sig = sampled[0]
        sig *= bias
        images[seq] = (acq.to_scanner_units(acq.rician(sig, sigma, crng), scale), sgrid.affine)
    images = {s: images[s] for s in SEQUENCES if s in images}
    # mask on the mask sequence's grid (its own breathing offset), by linear interpolation of occupancies
    mgrid, mshift = grids[mask_seq], shifts[mask_seq]
    mats = acq.grid_matrices(mgrid, grid, mshift, None)
    occ_target = np.zeros(grid.shape, np.float32)
    occ_other = np.zeros(grid.shape, np.float32)
    for lesion in lesions:
        f = les.lesion_fields(lesion, grid, near_liver)
        dst = occ_target if lesion.target else occ_other
        np.maximum(dst[f["sl"]], f["inside"], out=dst[f["sl"]])
    liver_o = acq.separable_resample(anatomy.liver.astype(np.float32), mats, mgrid.world_axis)
    target_o = acq.separable_resample(occ_target, mats, mgrid.world_axis)
    other_o = acq.separable_resample(occ_other, mats, mgrid.world_axis)
    mask = np.zeros(mgrid.shape, np.uint8)
    mask[liver_o > 0.5] = 1
    mask[other_o > 0.5] = 3
    mask[target_o > 0.5] = 2
    idx = np.argwhere(mask == 2)
    if idx.size:
        xyz = mgrid.affine[:3, :3] @ idx.mean(0) + mgrid.affine[:3, 3]
    else:  # a lesion smaller than a voxel of this grid: its centre still is the best estimate
        xyz = target.centre + mshift
        mask[tuple(np.clip(np.round(np.linalg.solve(mgrid.affine[:3, :3], xyz - mgrid.affine[:3, 3])), 0,
                           np.array(mgrid.shape) - 1).astype(int))] = 2
    info = {
        "variant": target.variant, "arterial_timing": round(phys.timing, 3), "b_value": center.b_value,
        "liver_fat_fraction": round(phys.liver_fat, 3),
        "lesion_fat_fraction": round(target.geometry["fat_fraction"], 3),
        "n_other_lesions": len(lesions) - 1, "anatomy": anatomy.source, "exam": spec.exam,
        "missing": sorted(missing),
    }
    return PhantomCase(case=spec.case, subject=spec.subject, center=spec.center,
                       label=spec.cls if spec.labeled else None, true_class=spec.cls, images=images,
                       mask=(mask, mgrid.affine), mask_sequence=mask_seq,
                       lesion_xyz=tuple(float(v) for v in xyz), lesion_diameter_mm=float(target.diameter_mm),
                       info=info)


def simulate_case(index: int, seed: int, config: PhantomConfig | None = None, *, cls: str | None = None,
                  center: str | None = None) -> PhantomCase:
    """Simulate case ``index`` of the cohort of ``seed`` in memory.

    Args:
        index: Case index (the cohort's ``ph<index>`` case).
        seed: Cohort seed.
        config: Simulation settings (default :class:`PhantomConfig()`).
        cls: Force the class (e.g. for previews); default: the cohort plan's class.
        center: Force the centre; default: the cohort plan's centre.

    Returns:
        The case, each sequence on its own grid as (int16 array, affine).
    """
    config = (config or PhantomConfig()).validate()
    spec = plan_case(index, seed, config)
    if cls is not None or center is not None:
        spec = dataclasses.replace(spec, cls=cls or spec.cls, center=center or spec.center)
    return _simulate(spec, seed, config)


def simulate_cohort(n_cases: int, seed: int, config: PhantomConfig | None = None) -> list[PhantomCase]:
    """Simulate ``n_cases`` cases in memory (single process; for tests and small experiments)."""
    config = (config or PhantomConfig()).validate()
    return [_simulate(plan_case(i, seed, config), seed, config) for i in range(n_cases)]


# --------------------------------------------------------------------------------------------- writing
def nifti_bytes(array: np.ndarray, affine: np.ndarray, description: str = "") -> bytes:
    """Gzipped NIfTI-1 bytes; deterministic (no timestamp or file name in the gzip header)."""
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    if description:
        img.header["descrip"] = description[:79].encode()
    # Huffman-only deflate: ~3x faster than level 1 at the same size on noisy MRI; the zlib gzip
    # wrapper writes mtime 0 and no file name, so bytes are reproducible
    co = zlib.compressobj(1, zlib.DEFLATED, 31, 9, zlib.Z_HUFFMAN_ONLY)
    return co.compress(img.to_bytes()) + co.flush()


def write_case(case: PhantomCase, root: Path) -> dict[str, str]:
    """Write a case's NIfTIs under ``root/cases/<case>/`` and return its manifest row.

    ``root`` is expected to be a folder being built atomically (see :func:`generate_cohort`); files
    are written directly.
    """
    folder = root / "cases" / case.case
    folder.mkdir(parents=True, exist_ok=True)
    row = {c: "" for c in MANIFEST_COLUMNS}
    row.update(case=case.case, subject=case.subject, center=case.center, label=case.label or "")
    for seq, (arr, aff) in case.images.items():
        rel = f"cases/{case.case}/{seq}.nii.gz"
        (root / rel).write_bytes(nifti_bytes(arr, aff, f"mrfound phantom {case.center} {seq}"))
        row[seq] = rel
    rel = f"cases/{case.case}/mask.nii.gz"
    desc = f"mrfound phantom mask on {case.mask_sequence}"
    (root / rel).write_bytes(nifti_bytes(case.mask[0], case.mask[1], desc))
    row["mask"] = rel
    row["lesion_x"], row["lesion_y"], row["lesion_z"] = (f"{v:.2f}" for v in case.lesion_xyz)
    row["lesion_diameter_mm"] = f"{case.lesion_diameter_mm:.1f}"
    return row


def manifest_text(rows: Sequence[dict[str, str]]) -> str:
    """CSV text of the manifest rows (columns :data:`MANIFEST_COLUMNS`)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def _one_blas_thread() -> contextlib.AbstractContextManager:
    """Limit BLAS/OpenMP to one thread while the context is open (no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(1)


def _init_worker() -> None:
    # one BLAS thread per worker process: the workers already fill the cores, and the files stay
    # identical to those of the in-process path
    _one_blas_thread()


def _generate_one(args: tuple[int, int, PhantomConfig, str]) -> tuple[int, dict[str, str], str]:
    index, seed, config, root = args
    case = _simulate(plan_case(index, seed, config), seed, config)
    return index, write_case(case, Path(root)), case.true_class


def default_workers() -> int:
    """Worker processes by default: the CPUs this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def generate_cohort(out_dir: str | os.PathLike, n_cases: int, seed: int, config: PhantomConfig | None = None,
                    *, workers: int | None = None, preview: bool = False, progress: bool | None = None,
                    callback: Callable[[int], None] | None = None) -> Path:
    """Simulate a cohort and write it to ``out_dir`` atomically (built in a temporary sibling folder).

    Layout: ``out_dir/manifest.csv``, ``out_dir/cases/<case>/<sequence>.nii.gz`` and ``mask.nii.gz``,
    and ``out_dir/preview.png`` with ``preview=True``. Files are identical whatever ``workers`` is.

    Args:
        out_dir: Output folder. An existing folder is replaced only if it holds a previous cohort
            (a ``manifest.csv``) or is empty.
        n_cases: Number of cases (> 0).
        seed: Cohort seed.
        config: Simulation settings.
        workers: Worker processes (default :func:`default_workers`; 1 = in this process).
        preview: Also write the class x sequence montage ``preview.png``.
        progress: Show a tqdm bar (default: only on a terminal).
        callback: Called with the number of finished cases (for tests and GUIs).

    Returns:
        Path of ``out_dir/manifest.csv``.
    """
    from tqdm.auto import tqdm

    from mrfound.utils.io import atomic_dir

    config = (config or PhantomConfig()).validate()
    if n_cases <= 0:
        raise ConfigError(f"--cases must be > 0, got {n_cases}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.csv").exists())):
        raise ConfigError(f"--out {out} exists and is not an earlier phantom cohort (no manifest.csv); "
                          "choose a new or empty folder")
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    workers = min(workers, n_cases)
    rows: dict[int, dict[str, str]] = {}
    with atomic_dir(out) as tmp:
        tasks = [(i, int(seed), config, str(tmp)) for i in range(n_cases)]
        bar = tqdm(total=n_cases, desc="phantom", unit="case",
                   disable=(None if progress is None else not progress))
        try:
            if workers == 1:
                # one BLAS thread, as in the workers: a threaded matrix product may round differently
                # (seen on an AVX2 CPU), and the files must not depend on ``workers``
                with _one_blas_thread():
                    for t in tasks:
                        i, row, _ = _generate_one(t)
                        rows[i] = row
                        bar.update(1)
                        if callback:
                            callback(len(rows))
            else:
                import multiprocessing as mp
                from concurrent.futures import ProcessPoolExecutor, as_completed

                ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
                with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, mp_context=ctx) as ex:
                    futures = [ex.submit(_generate_one, t) for t in tasks]
                    for fut in as_completed(futures):
                        i, row, _ = fut.result()
                        rows[i] = row
                        bar.update(1)
                        if callback:
                            callback(len(rows))
        finally:
            bar.close()
        ordered = [rows[i] for i in range(n_cases)]
        (tmp / "manifest.csv").write_text(manifest_text(ordered), encoding="utf-8")
        if preview:
            from mrfound.data.phantom.preview import cohort_preview

            cohort_preview(tmp / "manifest.csv", tmp / "preview.png", seed=seed, config=config)
    return out / "manifest.csv"
