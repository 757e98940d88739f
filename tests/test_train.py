"""Trainer end to end on CPU with the real model, the real loader and synthetic shards.

One small config (a quarter-width AlexNet SiamRPN, batch 4, 4-step epochs, backbone unfrozen
after epoch 1) keeps every run to seconds. Runs that must match bit for bit are all launched
as subprocesses with the same environment.
"""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from train.config import load_config
from train.preflight import PreflightError
from train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "train" / "run.py"
DEMO = ROOT / "configs" / "demo_cpu.yaml"
SMALL = [
    "DATASET.NAMES=[VID]",
    "BACKBONE.KWARGS={width_mult: 0.25}",
    "RPN.KWARGS={anchor_num: 5, in_channels: 64, out_channels: 64}",
    "BACKBONE.TRAIN_LAYERS=[layer4, layer5]",
    "BACKBONE.TRAIN_EPOCH=1",
    "TRAIN.BATCH_SIZE=4",
    "DATASET.VIDEOS_PER_EPOCH=16",
    "TRAIN.EPOCH=3",
    "TRAIN.PRINT_FREQ=1",
    "TRAIN.CKPT_INTERVAL=2",
    "TRAIN.LR_WARMUP.EPOCH=1",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _cmd(shards, out, *extra, opts=()):
    return [sys.executable, str(RUN), "--cfg", str(DEMO), "--shards", str(shards), "--out", str(out),
            "--device", "cpu", "--no-progress", *extra, "--opts", *SMALL, *opts]


def _losses(run_dir):
    """step -> total_loss from metrics.jsonl."""
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec["total_loss"]
    return out


def _wait_for_checkpoint(proc, path, done, timeout=120):
    """Poll until ``path`` holds a checkpoint for which ``done(ckpt)`` is true; then SIGKILL ``proc``."""
    seen = None
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if proc.poll() is not None:
            pytest.fail(f"training exited (rc {proc.returncode}) before the checkpoint to kill at")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            time.sleep(0.01)
            continue
        if (st.st_ino, st.st_mtime_ns) != seen:
            seen = (st.st_ino, st.st_mtime_ns)
            ckpt = torch.load(path, weights_only=True)
            if done(ckpt):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return torch.load(path, weights_only=True)  # what a resume will read
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"no matching checkpoint at {path} within {timeout}s")


def test_kill9_then_resume_reproduces_uninterrupted_losses(shards, tmp_path):
    """SIGKILL mid-epoch in the frozen phase, resume; SIGKILL again mid-epoch after the unfreeze,
    resume; every loss after each checkpoint equals the uninterrupted run's, across the unfreeze."""
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    every_step = ["TRAIN.CKPT_INTERVAL=1"]  # latest.pth after every step: the kill lands wherever it lands
    subprocess.run(_cmd(shards, ref, opts=every_step), check=True, env=ENV, capture_output=True)
    ref_losses = _losses(ref)
    assert sorted(ref_losses) == list(range(1, 13))

    proc = subprocess.Popen(_cmd(shards, cut, opts=every_step), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = _wait_for_checkpoint(proc, cut / "latest.pth", lambda c: c["epoch_step"] > 0)
    assert first["epoch"] == 0 and not first["backbone_unfrozen"], "kill must land in the frozen epoch"

    proc = subprocess.Popen(_cmd(shards, cut, "--resume", opts=every_step), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    second = _wait_for_checkpoint(proc, cut / "latest.pth", lambda c: c["epoch"] >= 1 and c["epoch_step"] > 0)
    assert second["backbone_unfrozen"] and second["global_step"] > first["global_step"]

    subprocess.run(_cmd(shards, cut, "--resume", opts=every_step), check=True, env=ENV, capture_output=True)
    cut_losses = _losses(cut)
    assert sorted(cut_losses) == sorted(ref_losses)
    # metrics.jsonl reads as the uninterrupted run's: no repeated step, the same records (timings aside)
    timing = ("pairs_per_s", "data_wait_frac")
    records = [{k: v for k, v in json.loads(x).items() if k not in timing} for x in
               (cut / "metrics.jsonl").read_text().splitlines()]
    assert records == [{k: v for k, v in json.loads(x).items() if k not in timing} for x in
                       (ref / "metrics.jsonl").read_text().splitlines()]
    for step in range(first["global_step"] + 1, 13):
        assert cut_losses[step] == ref_losses[step], f"step {step} differs after resume"
    final = torch.load(cut / "checkpoint_e3.pth", weights_only=True)
    ref_final = torch.load(ref / "checkpoint_e3.pth", weights_only=True)
    for k, v in ref_final["state_dict"].items():
        assert torch.equal(v, final["state_dict"][k]), k
    # PySOT-readable part of the checkpoint
    assert final["epoch"] == 3 and not any(k.startswith("module.") for k in final["state_dict"])
    assert len(final["optimizer"]["param_groups"]) == 2  # backbone + rpn_head (no neck in this config)


DDP_OPTS = ["TRAIN.RECORD_BATCHES=True", "TRAIN.EPOCH=2", "DATASET.VIDEOS_PER_EPOCH=8", "TRAIN.GRAD_CLIP=1000000.0"]


def test_ddp_two_processes_gloo_disjoint_data_and_summed_gradient(shards, tmp_path):
    """torchrun, 2 ranks on gloo: ranks train on different samples, and the first SGD step equals
    PySOT's: the SUM over ranks of each rank's gradient (not the DDP mean), recomputed here."""
    from pipeline import build_loader
    from model import build_model
    from train.freeze import apply_freeze, set_train_mode

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *_cmd(shards, out, opts=DDP_OPTS)[1:]]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    seen = []
    for rank in (0, 1):
        recs = [json.loads(x) for x in (out / f"batches_rank{rank}.jsonl").read_text().splitlines()]
        assert len(recs) == 2  # VIDEOS_PER_EPOCH 8 / (4 pairs x 2 ranks) = 1 step per epoch, 2 epochs
        seen.append({round(v, 3) for r in recs for v in r["template"] + r["search"]})
    assert seen[0] and seen[1] and not seen[0] & seen[1], "the two ranks trained on common samples"
    losses = _losses(out)
    assert sorted(losses) == [1, 2] and all(math.isfinite(v) for v in losses.values())
    final = torch.load(out / "checkpoint_e2.pth", weights_only=True)
    assert final["world_size"] == 2 and final["backbone_unfrozen"]

    # Reference for step 1 (frozen backbone): same init, each rank's own batch, gradients summed.
    cfg = _cfg(*DDP_OPTS)
    torch.manual_seed(cfg.TRAIN.SEED)
    model = build_model(cfg)
    apply_freeze(model, cfg, False)
    set_train_mode(model, cfg, False)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    grad_sum = [torch.zeros_like(p) for p in params]
    for rank in (0, 1):
        loader = build_loader(cfg, shards=str(shards), batch_size=4, device="cpu", rank=rank, world_size=2,
                              seed=cfg.TRAIN.SEED)
        loader.set_epoch(0)
        grads = torch.autograd.grad(model(next(iter(loader)))["total_loss"], params)
        grad_sum = [a + g for a, g in zip(grad_sum, grads)]
    step1 = torch.load(out / "checkpoint_e1.pth", weights_only=True)
    lr = step1["optimizer"]["param_groups"][-1]["lr"]
    wd = cfg.TRAIN.WEIGHT_DECAY
    for name, p, g in zip(names, params, grad_sum):
        got = step1["state_dict"][name]
        summed = p.detach() - lr * (g + wd * p.detach())  # SGD's first momentum step = the raw update
        averaged = p.detach() - lr * (g / 2 + wd * p.detach())
        torch.testing.assert_close(got, summed, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
        if (summed - averaged).abs().max() > 1e-4:
            assert not torch.allclose(got, averaged, rtol=1e-4, atol=1e-6), name


def _cfg(*extra):
    return load_config(DEMO, SMALL + list(extra))


def test_loss_decreases_on_synthetic_shards(shards, tmp_path):
    cfg = _cfg("DATASET.VIDEOS_PER_EPOCH=32", "TRAIN.EPOCH=4", "BACKBONE.TRAIN_EPOCH=0", "TRAIN.CKPT_INTERVAL=0",
               "TRAIN.LR_WARMUP.WARMUP=False", "TRAIN.BASE_LR=0.01", "TRAIN.LR.KWARGS={start_lr: 0.01, end_lr: 0.005}")
    summary = Trainer(cfg, shards=shards, out_dir=tmp_path, device="cpu", show_progress=False).fit()
    losses = [v for _, v in sorted(_losses(tmp_path).items())]
    assert len(losses) == 32 and summary["skipped_steps"] == 0
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.9 * first, f"loss did not decrease: first 8 mean {first:.4f}, last 8 mean {last:.4f}"
    assert summary["pairs_per_s"] > 0 and 0 <= summary["data_wait_frac"] < 1


class _EachBatch:
    """The real loader, each batch passed through ``change(epoch, index, batch)`` on its way out."""

    def __init__(self, loader, change):
        self.loader, self.change, self.epoch = loader, change, 0

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, e):
        self.epoch = e
        self.loader.set_epoch(e)

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, sd):
        self.loader.load_state_dict(sd)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            yield self.change(self.epoch, i, batch)


def _nan_template_at(loader, at):
    """The real loader, with one NaN pixel written into the template of chosen (epoch, batch)s."""
    at = set(at)

    def change(epoch, i, batch):
        if (epoch, i) in at:
            batch = dict(batch)
            batch["template"] = batch["template"].clone()
            batch["template"][0, 0, 5, 5] = float("nan")
        return batch

    return _EachBatch(loader, change)


def test_non_finite_loss_steps_are_skipped_and_counted(shards, tmp_path):
    from pipeline import build_loader

    cfg = _cfg("TRAIN.EPOCH=2")
    loader = build_loader(cfg, shards=str(shards), batch_size=4, device="cpu", rank=0, world_size=1,
                          seed=cfg.TRAIN.SEED)
    trainer = Trainer(cfg, shards=shards, out_dir=tmp_path, device="cpu", show_progress=False,
                      loader=_nan_template_at(loader, [(0, 1), (1, 2)]))
    summary = trainer.fit()
    assert summary["skipped_steps"] == 2
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["step"] for r in recs if r["total_loss"] is None]
    assert skipped == [2, 7] and recs[-1]["skipped_steps"] == 2
    state = torch.load(tmp_path / "latest.pth", weights_only=True)
    assert state["skipped_steps"] == 2
    for k, v in state["state_dict"].items():  # weights and BN statistics untouched by the NaN batches
        assert torch.isfinite(v.float()).all(), k


def test_the_command_as_typed_trains_the_r50_recipe(tmp_path):
    """`python train/run.py --shards cache/`, exactly as the README types it: PySOT's SiamRPN++ R50
    recipe and the device chosen automatically; in a folder without shards it stops with one line
    saying so, a non-zero exit status and no traceback."""
    from train.run import default_device, parse_args

    args = parse_args(["--shards", "cache/"])
    assert Path(args.cfg) == ROOT / "configs" / "siamrpn_r50_l234_dwxcorr_8gpu.yaml" and args.device is None
    assert load_config(args.cfg).BACKBONE.TYPE == "resnet50" and load_config(args.cfg).TRAIN.BATCH_SIZE == 28
    assert default_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    res = subprocess.run([sys.executable, str(RUN), "--shards", "cache/"], cwd=tmp_path, env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.strip().splitlines() == ["error: --shards cache does not exist; build shards with "
                                               "tools/build_lmdb.py"]


def test_bad_inputs_fail_before_training(shards, tmp_path):
    with pytest.raises(PreflightError, match="GOT10K"):  # missing shard folder
        Trainer(_cfg("DATASET.NAMES=[VID, GOT10K]"), shards=shards, out_dir=tmp_path, device="cpu")
    with pytest.raises(PreflightError, match="does not exist"):
        Trainer(_cfg(), shards=tmp_path / "nowhere", out_dir=tmp_path, device="cpu")
    with pytest.raises(PreflightError, match="context_amount"):  # crop params differ from the config
        Trainer(_cfg("TRACK.CONTEXT_AMOUNT=0.6"), shards=shards, out_dir=tmp_path, device="cpu")
    with pytest.raises(PreflightError, match="less than one global batch"):
        Trainer(_cfg("TRAIN.BATCH_SIZE=32"), shards=shards, out_dir=tmp_path, device="cpu")
    with pytest.raises(PreflightError, match="nothing to resume"):
        Trainer(_cfg(), shards=shards, out_dir=tmp_path / "empty", device="cpu", resume=True)
    # a checkpoint of another architecture (full-width AlexNet) against the quarter-width model
    other = load_config(DEMO, ["DATASET.NAMES=[VID]"])
    from model import build_model
    torch.save({"epoch": 1, "state_dict": build_model(other).state_dict()}, tmp_path / "other.pth")
    with pytest.raises(PreflightError, match="another architecture"):
        Trainer(_cfg(), shards=shards, out_dir=tmp_path, device="cpu", resume=tmp_path / "other.pth")
    if not torch.cuda.is_available():
        res = subprocess.run([c if c != "cpu" else "cuda" for c in _cmd(shards, tmp_path / "gpu")],
                             env=ENV, capture_output=True, text=True)
        assert res.returncode == 2 and "no CUDA GPU" in res.stderr


def test_pysot_checkpoint_resume_and_pretrained_weights(shards, tmp_path):
    """A PySOT-format checkpoint_e1 ({'epoch','state_dict' with module.,'optimizer'}) resumes at epoch 2;
    BACKBONE.PRETRAINED and TRAIN.PRETRAINED load their weights."""
    cfg = _cfg("TRAIN.EPOCH=2", "TRAIN.CKPT_INTERVAL=0")
    Trainer(cfg, shards=shards, out_dir=tmp_path / "a", device="cpu", show_progress=False).fit()
    ours = torch.load(tmp_path / "a" / "checkpoint_e1.pth", weights_only=True)
    pysot = {"epoch": 1, "state_dict": {"module." + k: v for k, v in ours["state_dict"].items()},
             "optimizer": ours["optimizer"]}
    torch.save(pysot, tmp_path / "pysot_e1.pth")
    resumed = Trainer(cfg, shards=shards, out_dir=tmp_path / "b", device="cpu", show_progress=False,
                      resume=tmp_path / "pysot_e1.pth")
    assert resumed.epoch == 1 and resumed.epoch_step == 0 and resumed.unfrozen
    assert resumed.fit()["global_step"] == 8

    torch.save(ours["state_dict"], tmp_path / "whole.pth")
    backbone = {k[len("backbone."):]: v for k, v in ours["state_dict"].items() if k.startswith("backbone.")}
    torch.save(backbone, tmp_path / "backbone.pth")
    t = Trainer(_cfg(f"BACKBONE.PRETRAINED={tmp_path / 'backbone.pth'}"), shards=shards, out_dir=tmp_path / "c",
                device="cpu", show_progress=False)
    for k, v in t.model.backbone.state_dict().items():
        assert torch.equal(v, backbone[k]), k
    t = Trainer(_cfg(f"TRAIN.PRETRAINED={tmp_path / 'whole.pth'}"), shards=shards, out_dir=tmp_path / "d",
                device="cpu", show_progress=False)
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, ours["state_dict"][k]), k


# Two 2-step epochs around the unfreeze: the smallest run that covers both trainable sets.
TWO_BY_TWO = ["TRAIN.EPOCH=2", "DATASET.VIDEOS_PER_EPOCH=8", "TRAIN.CKPT_INTERVAL=0"]


def test_compiled_training_matches_eager_across_the_unfreeze(shards, tmp_path):
    """TRAIN.COMPILE=True (torch.compile, inductor) trains through the unfreeze, where the model is
    re-wrapped and recompiled for the new trainable set, with the eager run's losses and weights."""
    import torch._dynamo
    import torch._inductor.config

    runs = {}
    for compile_ in (False, True):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        trainer = Trainer(_cfg(*TWO_BY_TWO, f"TRAIN.COMPILE={compile_}"), shards=shards,
                          out_dir=tmp_path / str(compile_), device="cpu", show_progress=False)
        trainer.fit()
        runs[compile_] = (_losses(tmp_path / str(compile_)), trainer.model.state_dict(), trainer.net)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    (eager, eager_w, _), (compiled, compiled_w, net) = runs[False], runs[True]
    assert isinstance(net, torch._dynamo.eval_frame.OptimizedModule)
    assert graphs >= 2, f"expected a compiled graph per phase (frozen, unfrozen), dynamo captured {graphs}"
    assert sorted(compiled) == sorted(eager) == [1, 2, 3, 4]
    for step, loss in eager.items():  # inductor reorders float sums: close, not bit-equal
        assert math.isfinite(compiled[step]) and compiled[step] == pytest.approx(loss, rel=1e-3, abs=1e-5), step
    for k, v in eager_w.items():  # 4 SGD steps of reordered sums: ~1e-4 on a few near-zero weights
        torch.testing.assert_close(compiled_w[k], v, rtol=1e-3, atol=3e-4, msg=lambda m: f"{k}: {m}")

    # a missing C++ toolchain is a clear error before training, not a traceback at the first step
    with torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/c++",)}):
        with pytest.raises(PreflightError, match="C\\+\\+ compiler"):
            Trainer(_cfg(*TWO_BY_TWO, "TRAIN.COMPILE=True"), shards=shards, out_dir=tmp_path / "nocxx", device="cpu")


def test_log_grads_writes_per_module_grad_norms(shards, tmp_path):
    """TRAIN.LOG_GRADS: metrics.jsonl carries the pre-clip grad norm in total and per top-level module
    (the backbone only once it trains); step 1's values equal a gradient recomputed here."""
    from model import build_model
    from pipeline import build_loader
    from train.freeze import apply_freeze, set_train_mode
    from train.grad_stats import grad_norms

    cfg = _cfg(*TWO_BY_TWO, "TRAIN.LOG_GRADS=True")
    Trainer(cfg, shards=shards, out_dir=tmp_path, device="cpu", show_progress=False).fit()
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    for r in recs:
        groups = {k: v for k, v in r.items() if k.startswith("grad_norm/")}
        expected = {"grad_norm/rpn_head"} | ({"grad_norm/backbone"} if r["epoch"] >= 1 else set())
        assert set(groups) == expected, r
        assert all(math.isfinite(v) and v > 0 for v in groups.values()), r
        assert r["grad_norm"] == pytest.approx(math.sqrt(sum(v * v for v in groups.values())), rel=1e-6)

    # step 1, recomputed: same init and batch, frozen backbone
    torch.manual_seed(cfg.TRAIN.SEED)
    model = build_model(cfg)
    apply_freeze(model, cfg, False)
    set_train_mode(model, cfg, False)
    loader = build_loader(cfg, shards=str(shards), batch_size=4, device="cpu", rank=0, world_size=1,
                          seed=cfg.TRAIN.SEED)
    loader.set_epoch(0)
    model(next(iter(loader)))["total_loss"].backward()
    head = torch.cat([p.grad.flatten() for p in model.rpn_head.parameters()])
    assert recs[0]["grad_norm/rpn_head"] == pytest.approx(head.norm().item(), rel=1e-4)
    every = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert recs[0]["grad_norm"] == pytest.approx(torch.linalg.vector_norm(every).item(), rel=1e-4)
    _, params = grad_norms(model, per_param=True)  # PySOT's per-parameter scalars (TensorBoard only)
    name, p = next(iter(model.rpn_head.named_parameters()))
    tag = f"rpn_head/{name.replace('.', '/')}"
    assert params[f"grad/{tag}"] == pytest.approx(p.grad.norm().item(), rel=1e-5)
    assert params[f"weight/{tag}"] == pytest.approx(p.norm().item(), rel=1e-5)
    assert params[f"w-g/{tag}"] == pytest.approx(p.norm().item() / p.grad.norm().item(), rel=1e-5)
    assert not any(k.startswith("grad/backbone/") for k in params)  # frozen: no gradient, no scalar

    off = tmp_path / "off"  # LOG_GRADS off (the default): no gradient fields
    Trainer(_cfg(*TWO_BY_TWO), shards=shards, out_dir=off, device="cpu", show_progress=False).fit()
    keys = {k for line in (off / "metrics.jsonl").read_text().splitlines() for k in json.loads(line)}
    assert "total_loss" in keys and not any(k.startswith("grad_norm") for k in keys)


def test_startup_removes_stale_checkpoint_temp_files(shards, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".latest.pth.tmp{int(dead.stdout)}"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".checkpoint_e1.pth.tmp{os.getpid()}"
    live.write_bytes(b"being written")
    Trainer(_cfg(), shards=shards, out_dir=tmp_path, device="cpu", show_progress=False)
    assert not stale.exists() and live.exists()
    assert f"removed {stale}" in (tmp_path / "train.log").read_text()
