"""``mrfound preprocess``: resample and normalise every case into the content-addressed cache."""

from __future__ import annotations

import argparse
import sys
import time

HELP = "resample and normalise every case into the preprocessing cache"
EXAMPLES = """examples:
  mrfound preprocess --manifest cohort/manifest.csv --out cache/
      preprocess every case (1.5 mm isotropic RAS grid, robust normalisation) into cache/
  mrfound preprocess --manifest cohort/manifest.csv --out cache/ --workers 2 --spacing 2.0
      two processes, 2 mm grid; a second run with the same files and settings is all cache hits
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="manifest CSV")
    p.add_argument("--out", required=True, help="cache folder (created if missing)")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.add_argument("--spacing", type=float, default=None, help="grid spacing in mm (default 1.5)")
    p.add_argument("--no-crop-body", action="store_true", help="keep the reference's full field of view")
    from mrfound.data.preprocess import FOREGROUND_METHODS

    p.add_argument(
        "--foreground",
        choices=FOREGROUND_METHODS,
        default=None,
        help="foreground threshold of the normalisation (default log_otsu, which keeps dark tissue such as "
        "the liver on fat-suppressed T2; otsu: raw-intensity Otsu, the method before log_otsu)",
    )
    from mrfound.data.guard import add_on_error_argument

    add_on_error_argument(p)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _one(job: tuple) -> tuple[str, bool, str | None]:
    """Worker: preprocess one case into the cache -> (case id, hit, error message or None)."""
    case, folder, config_dict, vocab_dict = job
    from mrfound.data.cache import PreprocessCache
    from mrfound.data.preprocess import PreprocessConfig
    from mrfound.data.sequences import Vocabulary
    from mrfound.errors import MrfoundError

    cache = PreprocessCache(folder, PreprocessConfig.from_dict(config_dict), Vocabulary.from_dict(vocab_dict))
    try:
        if cache.has(case):
            return case.case, True, None
        cache.get_with_status(case)
        return case.case, False, None
    except MrfoundError as e:
        return case.case, False, str(e)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from mrfound.data.guard import checked_manifest
    from mrfound.data.preprocess import PreprocessConfig
    from mrfound.errors import ConfigError

    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    config = PreprocessConfig()
    if args.spacing is not None:
        config.spacing = args.spacing
    if args.no_crop_body:
        config.crop_to_body = False
    if args.foreground is not None:
        config.foreground = args.foreground
    config = PreprocessConfig.from_dict(config.to_dict())  # re-validate edited values
    # every file checked before anything is written (bad rows -> one-line error, or OUT/rejected.csv)
    manifest = checked_manifest(args.manifest, on_error=args.on_error, out_dir=args.out)
    jobs = [(c, args.out, config.to_dict(), manifest.vocabulary.to_dict()) for c in manifest]
    t0 = time.perf_counter()
    results: list[tuple[str, bool, str | None]] = []
    bar = tqdm(total=len(jobs), desc="preprocessing", unit="case", disable=None)
    if args.workers == 1:
        for job in jobs:
            results.append(_one(job))
            bar.update()
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        import monai.transforms  # noqa: F401  (imported once here, inherited by the forked workers)

        # fork (no re-import of torch/MONAI, ~10 s per worker on 2 cores) with one intra-op thread per
        # worker, as torch's DataLoader does: OpenMP is then never entered in the forked child
        with ProcessPoolExecutor(
            args.workers, mp_context=mp.get_context("fork"), initializer=_init_worker
        ) as pool:
            futures = [pool.submit(_one, job) for job in jobs]
            for fut in as_completed(futures):
                results.append(fut.result())
                bar.update()
    bar.close()
    dt = time.perf_counter() - t0
    hits = sum(1 for _, hit, err in results if hit and err is None)
    failed = [(c, err) for c, _, err in results if err is not None]
    made = len(results) - hits - len(failed)
    print(
        f"{len(results)} case(s) in {dt:.1f} s: {hits} cache hit(s), {made} preprocessed, "
        f"{len(failed)} failed -> {args.out}"
    )
    for _, err in failed:
        print(f"mrfound preprocess: error: {err}", file=sys.stderr)
    return 2 if failed else 0
