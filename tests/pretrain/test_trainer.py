"""Tests of mrfound/pretrain/trainer.py in one process with the toy model: schedule, logs, checkpoints,
non-finite losses (disk full during a checkpoint write: tests/reliability/test_disk_full.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _pretrain_toy import ToyCases, ToyMAE, toy_collate, toy_config, train

from mrfound.errors import ConfigError, NonFiniteLossError
from mrfound.pretrain.trainer import (
    STATE_FILE,
    Callback,
    EpochSampler,
    EveryN,
    Trainer,
    default_param_groups,
    find_latest_checkpoint,
    list_checkpoints,
    read_log,
    warmup_cosine,
)


def test_warmup_cosine_shape():
    f = [warmup_cosine(s, warmup_steps=4, total_steps=20, min_ratio=0.1) for s in range(20)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == 1.0 and all(a >= b for a, b in zip(f[4:], f[5:]))  # monotone decay after warm-up
    assert f[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 15 / 16)))
    mid = 4 + 8  # half-way through the decay
    assert f[mid] == pytest.approx(0.1 + 0.9 * 0.5)
    assert warmup_cosine(0, warmup_steps=0, total_steps=10) == 1.0


def test_epoch_sampler_is_a_seeded_permutation_per_epoch():
    s = EpochSampler(10, seed=1)
    s.set_epoch(0)
    a = list(s)
    s.set_epoch(1)
    b = list(s)
    s.set_epoch(0)
    assert sorted(a) == list(range(10)) and a != b and list(s) == a
    assert list(EpochSampler(10, seed=2)) != a


def test_log_jsonl_schedule_checkpoints_and_tensorboard(tmp_path):
    cfg = toy_config(
        tmp_path / "run",
        steps=8,
        warmup_steps=2,
        log_every=1,
        save_every=2,
        keep_checkpoints=2,
        tensorboard=True,
    )
    trainer = train(cfg)
    rows = read_log(tmp_path / "run" / "log.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 9))
    for r in rows:
        for key in ("step", "loss", "loss_inpaint", "loss_synth", "lr", "cases_per_s", "time", "grad_norm"):
            assert isinstance(r[key], int | float) and math.isfinite(r[key]), key
    expected = [
        cfg.lr * warmup_cosine(s, warmup_steps=2, total_steps=8, min_ratio=cfg.min_lr / cfg.lr)
        for s in range(8)
    ]
    assert [r["lr"] for r in rows] == pytest.approx(expected)
    assert rows[-1]["loss"] < rows[0]["loss"]
    # keep-last-2, no temporaries, a complete newest checkpoint
    ckpts = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in ckpts] == ["step_0000006", "step_0000008"]
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]
    state = json.loads((ckpts[-1] / STATE_FILE).read_text())
    assert state["step"] == 8 and state["world_size"] == 1 and state["batches_per_epoch"] == 3
    assert json.loads((tmp_path / "run" / "config.json").read_text())["steps"] == 8
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    assert trainer.last_checkpoint == ckpts[-1]


def test_fresh_start_refuses_an_existing_run(tmp_path):
    train(toy_config(tmp_path / "run", steps=2, save_every=2))
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(toy_config(tmp_path / "run", steps=2, save_every=2))


def test_resume_after_completion_is_a_no_op(tmp_path):
    a = train(toy_config(tmp_path / "run", steps=4))
    before = a.export_state_dict()
    b = train(toy_config(tmp_path / "run", steps=4, resume=True))
    after = b.export_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [r["step"] for r in read_log(tmp_path / "run" / "log.jsonl")] == [1, 2, 3, 4]


def test_ema_grad_accum_and_bf16_train(tmp_path):
    trainer = train(toy_config(tmp_path / "run", steps=4, ema=0.9, grad_accum=2, mixed_precision="bf16"))
    live = trainer.unwrapped_model().state_dict()
    ema = trainer.export_state_dict()
    assert any(not torch.allclose(live[k].float(), ema[k]) for k in ema)  # exported weights are the EMA
    assert (find_latest_checkpoint(tmp_path / "run" / "checkpoints") / "ema.safetensors").is_file()
    rows = read_log(tmp_path / "run" / "log.jsonl")
    assert rows[-1]["cases_per_s"] > 0 and all(math.isfinite(r["loss"]) for r in rows)


@pytest.mark.parametrize(
    ("native", "precision", "warned"), [(False, "bf16", True), (True, "bf16", False), (False, "no", False)]
)
def test_bf16_on_a_cpu_without_native_bf16_is_flagged(
    tmp_path, monkeypatch, caplog, native, precision, warned
):
    import mrfound.pretrain.trainer as T

    monkeypatch.setattr(T, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level("WARNING", logger=T.__name__):
        T.make_accelerator(toy_config(tmp_path / "run", steps=1, mixed_precision=precision))
    flagged = [r for r in caplog.records if "without native bf16" in r.getMessage()]
    assert bool(flagged) is warned


def test_cpu_has_native_bf16_is_false_without_avx512_or_amx():
    from pathlib import Path

    from mrfound.pretrain.trainer import cpu_has_native_bf16

    answer = cpu_has_native_bf16()
    assert answer in (True, False)
    info = Path("/proc/cpuinfo")
    text = info.read_text() if info.is_file() else ""
    flags = {f for line in text.splitlines() if line.startswith("flags") for f in line.split()}
    if flags and not flags & {"avx512f", "amx_bf16"}:
        assert answer is False  # an AVX2-only CPU has no bf16 arithmetic of its own


def test_default_param_groups_exempt_biases_and_norms():
    model = ToyMAE()
    groups = default_param_groups(model, weight_decay=0.05)
    decay = {id(p) for p in groups[0]["params"]}
    assert (
        id(model.enc.weight) in decay
        and id(model.enc.bias) not in decay
        and id(model.norm.weight) not in decay
    )
    assert groups[1]["weight_decay"] == 0.0


def test_param_groups_with_lr_scale_and_callbacks(tmp_path):
    torch.manual_seed(0)
    model = ToyMAE()
    groups = [
        {"params": model.enc.parameters(), "lr_scale": 0.5},
        {"params": model.dec.parameters()},
        {"params": model.norm.parameters(), "lr": 1e-4},
    ]
    calls = []

    class Rec(Callback):
        def on_train_start(self, trainer):
            calls.append("start")

        def on_train_end(self, trainer):
            calls.append("end")

    every = []
    cfg = toy_config(tmp_path / "run", steps=5, warmup_steps=0, min_lr=0.0)
    trainer = Trainer(
        model,
        ToyCases(),
        cfg,
        collate_fn=toy_collate,
        param_groups=groups,
        callbacks=[Rec(), EveryN(2, lambda t: every.append(t.step))],
    )
    first = [g["lr"] for g in trainer.optimizer.param_groups]
    assert first == pytest.approx([cfg.lr * 0.5, cfg.lr, 1e-4])
    trainer.fit()
    assert calls == ["start", "end"] and every == [2, 4, 5]


def test_hold_steps_keep_a_group_still_then_train_it_on_its_own_schedule(tmp_path):
    torch.manual_seed(0)
    model = ToyMAE()
    groups = [{"params": model.enc.parameters(), "hold_steps": 3}, {"params": model.dec.parameters()}]
    seen = []

    def snap(t):
        enc, dec = t.unwrapped_model().enc.weight, t.unwrapped_model().dec.weight
        lrs = [g["lr"] for g in t.optimizer.param_groups]
        seen.append((t.step, enc.detach().clone(), dec.detach().clone(), lrs))

    cfg = toy_config(tmp_path / "run", steps=6, warmup_steps=2, min_lr=0.0)
    trainer = Trainer(
        model, ToyCases(), cfg, collate_fn=toy_collate, param_groups=groups, callbacks=[EveryN(1, snap)]
    )
    enc0, dec0 = model.enc.weight.detach().clone(), model.dec.weight.detach().clone()
    trainer.fit()
    by_step = {s: (e, d, lr) for s, e, d, lr in seen}
    # steps 1-3: the held group has not moved (LR 0, gradient dropped), the other has
    assert torch.equal(by_step[3][0], enc0) and not torch.equal(by_step[1][1], dec0)
    assert not torch.equal(by_step[4][0], enc0)
    # its own warm-up after the hold: step 4 (index 3) runs at lr/2, as the other group's first step
    assert by_step[3][2][0] == pytest.approx(cfg.lr * 0.5)
    with pytest.raises(ConfigError, match="hold_steps"):
        Trainer(
            ToyMAE(),
            ToyCases(),
            toy_config(tmp_path / "run2", steps=3),
            collate_fn=toy_collate,
            param_groups=[{"params": model.enc.parameters(), "hold_steps": 3}],
        )


def test_nonfinite_loss_stops_before_the_update_and_names_step_and_cases(tmp_path):
    torch.manual_seed(3)
    cfg = toy_config(tmp_path / "run", steps=6, save_every=1)
    trainer = Trainer(ToyMAE(nan_cases=("case_005",)), ToyCases(), cfg, collate_fn=toy_collate)
    with pytest.raises(NonFiniteLossError) as e:
        trainer.fit()
    msg = str(e.value)
    step = trainer.step + 1
    assert f"at step {step}," in msg and "case_005" in msg and "--skip-nonfinite" in msg and "\n" not in msg
    weights = trainer.unwrapped_model().state_dict()
    assert all(torch.isfinite(v).all() for v in weights.values())
    # the weights are exactly those of the last checkpoint (no update happened in the failing step)
    from safetensors.torch import load_file

    last = load_file(str(find_latest_checkpoint(tmp_path / "run" / "checkpoints") / "model.safetensors"))
    assert int(find_latest_checkpoint(tmp_path / "run" / "checkpoints").name[5:]) == trainer.step
    assert all(torch.equal(last[k], weights[k]) for k in last)


def test_skip_nonfinite_counts_logs_and_keeps_finite_weights(tmp_path):
    cfg = toy_config(tmp_path / "run", steps=6, skip_nonfinite=True)
    trainer = train(cfg, nan_cases=("case_005",))
    assert trainer.skipped_nonfinite >= 1
    rows = read_log(tmp_path / "run" / "log.jsonl")
    events = [r for r in rows if r.get("event") == "skipped_nonfinite"]
    assert len(events) == trainer.skipped_nonfinite and all("case_005" in ev["cases"] for ev in events)
    assert [r for r in rows if "event" not in r][-1]["skipped_nonfinite"] == trainer.skipped_nonfinite
    assert all(torch.isfinite(v).all() for v in trainer.export_state_dict().values())
    state = json.loads((find_latest_checkpoint(tmp_path / "run" / "checkpoints") / STATE_FILE).read_text())
    assert state["skipped_nonfinite"] == trainer.skipped_nonfinite and state["step"] == 6


def test_too_small_dataset_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="fewer than one batch"):
        Trainer(ToyMAE(), ToyCases(3), toy_config(tmp_path / "r", batch_size=4), collate_fn=toy_collate)
