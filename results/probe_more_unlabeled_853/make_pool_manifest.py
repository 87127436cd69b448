"""The one-off step that pooled the 213 training cases with 640 unlabeled phantom cases (run 2026-12-05).

Run in W = /tmp/mrfound_bench/phenotype after ``mrfound phantom --out W/extra_640 --cases 640 --seed 101
--centers uni_3t,community_15t,oncology,surveillance --unlabeled-fraction 1.0 --balanced --spacing-scale 1.5
--workers 2``; writes W/pretrain_train_plus640.csv
(case ids ph -> ux, subject ids sub -> usub, paths made relative to W). ``mrfound phantom --id-prefix u`` and
two ``--manifest`` flags to ``mrfound pretrain`` now do the same in one step (ids uph..., usub...).
"""

import csv

rows = list(csv.DictReader(open("train.csv")))
fields = list(rows[0].keys())
extra = list(csv.DictReader(open("extra_640/manifest.csv")))
paths = ["t2", "dwi", "t1_in", "t1_opp", "t1_pre", "t1_art", "t1_pv", "t1_del", "mask"]
for r in extra:
    r["case"] = "ux" + r["case"][2:]
    r["subject"] = "usub" + r["subject"][3:]
    for c in paths:
        if r[c]:
            r[c] = "extra_640/" + r[c]
with open("pretrain_train_plus640.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    w.writerows(rows + extra)
