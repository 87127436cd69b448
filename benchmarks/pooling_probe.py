"""How the frozen tokens are pooled vs whether they were pretrained: a linear-probe diagnostic.

Reads the cohort and the pretraining runs a ``benchmarks/phenotype.py`` invocation left in its work folder
(``train.csv``, ``test.csv``, ``cache/``, ``<run>/final``), and probes each encoder's frozen tokens of the
lesion-centred ROIs pooled four ways:

* ``global``: mean over every token of every available sequence (what ``embed`` and the benchmark use);
* ``centre``: mean over the tokens of the central half of the patch grid on every axis (where the lesion
  sits in a lesion-centred ROI), every available sequence (``MultiSequenceViT.embed(pooling="centre")``,
  ``mrfound probe --pooling centre``);
* ``global+centre``: both, concatenated;
* ``centre_per_sequence``: the central tokens' mean of each sequence separately, concatenated (S x C;
  an absent sequence's block is imputed with its training mean by the probe)
  (``MultiSequenceViT.embed(pooling="centre_per_sequence")``,
  ``mrfound probe --pooling centre_per_sequence``).

With ``--per-block`` the ``global`` pooling is also taken of each encoder block's output
(``block_<i>``, before the final norm), to see whether an earlier layer of the pretrained encoder is
the better one to probe.

Each run is also probed at random init (same architecture, seed 0). A mean-imputed, standardised
logistic regression (C = 0.1) is trained on the training cases with every sequence and scored (macro
one-vs-rest AUC) on the test cases with the sequences of each missing-sequence protocol only.

Usage::

    .venv/bin/python benchmarks/pooling_probe.py --work /tmp/mrfound_bench/phenotype_small \\
        --runs pretrain_ours_4a96adef0b,pretrain_plain_mae_de845bc743
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import provenance  # noqa: E402

from mrfound.utils.machine import machine_info  # noqa: E402

PROTOCOLS = {
    "all": None,
    "no_contrast": ("t2", "dwi", "t1_in", "t1_opp"),
    "t2_only": ("t2",),
    "contrast_only": ("t1_pre", "t1_art", "t1_pv", "t1_del"),
}
POOLINGS = ("global", "centre", "global+centre", "centre_per_sequence")


@torch.no_grad()
def pooled_features(
    encoder: Any, loader: Any, keep: torch.Tensor, per_block: bool = False
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Features of every pooling for the cases of ``loader`` with only the ``keep`` sequences.

    With ``per_block`` also ``block_<i>``: the mean over every token of block ``i``'s output (before the
    final norm), i.e. the ``global`` pooling one layer at a time.
    """
    from mrfound.models.heads import EncoderHooks

    out: dict[str, list[torch.Tensor]] = {p: [] for p in POOLINGS}
    usable: list[torch.Tensor] = []
    with EncoderHooks(encoder.blocks, range(len(encoder.blocks)) if per_block else []) as hooks:
        for batch in loader:
            available = batch["available"] & keep
            has_any = available.any(1)
            usable.append(has_any)
            available[~has_any, 0] = True  # placeholder so the forward pass runs; the row is dropped below
            enc = encoder(batch["image"], available)
            _pool_batch(encoder, enc, out)
            for i, tokens in sorted(hooks.outputs.items()):
                out.setdefault(f"block_{i}", []).append(encoder.pool(tokens, enc["valid"]))
    return {p: torch.cat(v).float().numpy() for p, v in out.items()}, torch.cat(usable).numpy()


def _pool_batch(encoder: Any, enc: dict[str, torch.Tensor], out: dict[str, list[torch.Tensor]]) -> None:
    """Append one batch's features of every pooling in ``POOLINGS`` to ``out``."""
    valid = enc["valid"]
    central = valid & encoder.centre_tokens(enc["pos_idx"])
    g = encoder.pool(enc["tokens"], valid)
    c = encoder.pool(enc["tokens"], central)
    out["global"].append(g)
    out["centre"].append(c)
    out["global+centre"].append(torch.cat([g, c], 1))
    out["centre_per_sequence"].append(encoder.pool_per_sequence(enc["tokens"], central, enc["seq_idx"]))


def probe_run(
    work: Path, run: str, random_init: bool, c: float, per_block: bool = False
) -> dict[str, dict[str, float]]:
    """Macro AUC per pooling (and, with ``per_block``, per block) and protocol for one encoder."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from torch.utils.data import DataLoader

    from mrfound.data.dataset import MRDataset, collate_cases
    from mrfound.data.manifest import read_manifest
    from mrfound.data.preprocess import PreprocessConfig
    from mrfound.models.checkpoint import load_model

    model, cfg = load_model(work / run / "final")
    if random_init:
        torch.manual_seed(0)
        model = type(model)(model.encoder.config, model.config)
    encoder = model.encoder.eval()
    pp = PreprocessConfig.from_saved(cfg["preprocessing"])  # the checkpoint's own preprocessing
    seqs = list(encoder.config.sequences)

    def features(split: str, protocol: tuple[str, ...] | None):
        man = read_manifest(work / f"{split}.csv")
        ds = MRDataset(man, pp, mode="lesion", cache_dir=work / "cache")
        loader = DataLoader(ds, batch_size=16, collate_fn=collate_cases)
        keep = torch.tensor([protocol is None or s in protocol for s in seqs])
        feats, usable = pooled_features(encoder, loader, keep, per_block)
        return feats, np.array([case.label for case in man.cases]), usable

    train, y_train, _ = features("train", None)
    result: dict[str, dict[str, float]] = {p: {} for p in train}
    tests = {name: features("test", prot) for name, prot in PROTOCOLS.items()}
    for pooling in train:
        clf = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(C=c, max_iter=3000))
        clf.fit(train[pooling], y_train)
        for name, (feats, y, usable) in tests.items():
            proba, truth = clf.predict_proba(feats[pooling][usable]), y[usable]
            # macro one-vs-rest over the classes with positives and negatives among these test cases
            aucs = [
                roc_auc_score(truth == k, proba[:, i])
                for i, k in enumerate(clf.classes_)
                if 0 < (truth == k).sum() < len(truth)
            ]
            result[pooling][name] = round(float(np.mean(aucs)), 4) if aucs else float("nan")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="work folder of a benchmarks/phenotype.py run")
    ap.add_argument("--runs", required=True, help="comma-separated pretraining run folders inside --work")
    ap.add_argument("--C", type=float, default=0.1, help="inverse L2 strength of the probe (0.1)")
    ap.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--per-block",
        action="store_true",
        help="also probe the mean token of each encoder block's output (block_0, block_1, ...)",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    t0 = time.time()
    doc: dict[str, Any] = {
        "benchmark": "pooling_probe",
        **provenance(argv),
        "machine": machine_info(),
        "probe": f"SimpleImputer + StandardScaler + LogisticRegression(C={args.C}); macro one-vs-rest AUC on "
        "test cases",
        "results": {},
    }
    for run in [r for r in args.runs.split(",") if r]:
        for random_init in (False, True):
            key = f"{run}{' (random init)' if random_init else ''}"
            doc["results"][key] = probe_run(work, run, random_init, args.C, args.per_block)
            print(f"[pooling_probe] {key}: {json.dumps(doc['results'][key])}", file=sys.stderr, flush=True)
    doc["wall_s"] = round(time.time() - t0, 1)
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        from mrfound.utils.io import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    return doc


if __name__ == "__main__":
    main()
