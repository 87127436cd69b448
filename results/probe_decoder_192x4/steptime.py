import time, torch, sys
from mrfound.models.registry import get_configs
from mrfound.models.mae import MaskedModalityAutoencoder
torch.manual_seed(0)
torch.set_num_threads(1)
res = {}
for name, ov in [("dec128x2", {}), ("dec128x4", dict(decoder_depth=4)), ("dec192x4_md256", dict(decoder_dim=192, decoder_depth=4, decoder_heads=6, max_decoded=256)),
                 ("dec256x4", dict(decoder_dim=256, decoder_depth=4, decoder_heads=8)),
                 ("dec128x4_md256", dict(decoder_depth=4, max_decoded=256))]:
    enc, mae = get_configs("tiny", img_size=32, patch_size=8, sequence_drop=0.5, **ov)
    m = MaskedModalityAutoencoder(enc, mae)
    opt = torch.optim.AdamW(m.parameters(), 1e-4)
    x = torch.randn(8, 8, 32, 32, 32); a = torch.ones(8, 8, dtype=torch.bool)
    ts = []
    for i in range(12):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x, a)
        out["loss"].backward(); opt.step(); opt.zero_grad()
        ts.append(time.perf_counter() - t)
    res[name] = sum(ts[4:]) / len(ts[4:])
    print(name, round(res[name], 3), sum(p.numel() for p in m.parameters()), flush=True)
