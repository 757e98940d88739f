"""The first run on a GPU, in one command (at most 5 minutes on one GPU):

    python tools/gpu_check.py [--out gpu_report.json] [--shards DIR] [--work DIR]
    python tools/gpu_check.py --cpu-dry-run [--shards DIR]      # the same stages, tiny, on the CPU
    python tools/gpu_check.py --build-shards-only --work DIR    # prepare the shards on a CPU machine

Stages, each a subprocess with its own time budget (a failure or a timeout is a row in the
table, never the end of the check): synthetic shards (unless --shards), the GPU tests (pytest
on tests/test_train_gpu.py and tests/test_loader_gpu.py), tools/bench_loader.py --device cuda,
tools/bench_train.py on the R50 recipe (frozen and unfrozen phases, with a 5-step torch.profiler
summary per phase), and a short R50 training run across the unfreeze. Prints one table (card,
loader pairs/s and CPU cores busy, ms per step, MFU, data wait, xcorr layout copies, peak memory
torch + device) with each figure against its target, and writes it as JSON (--out). For a missed
loader target it also profiles 5 loader batches. Exit status 0 when every stage ran and every
target was met (dry run: every stage ran), else 1.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.fileio import atomic_write  # noqa: E402

R50 = REPO / "configs" / "siamrpn_r50_l234_dwxcorr_8gpu.yaml"
DEMO = REPO / "configs" / "demo_cpu.yaml"
TOTAL_BUDGET_S = 300
# Targets on one H100-class GPU (issue 10).
LOADER_MIN_PAIRS_S = 10_000
LOADER_MAX_CORES = 2.0
MIN_MFU = 0.40
MAX_DATA_WAIT = 0.02
MAX_XCORR_SHARE = 0.01

# What each stage runs. The R50 recipe on our synthetic VID shards: no pretrained backbone file
# on a bare host; the dry run uses the CPU demo model at a quarter width.
R50_OPTS = ["DATASET.NAMES=[VID]", "BACKBONE.PRETRAINED="]
DRY_OPTS = ["DATASET.NAMES=[VID]", "BACKBONE.KWARGS={width_mult: 0.25}", "BACKBONE.TRAIN_EPOCH=1",
            "RPN.KWARGS={anchor_num: 5, in_channels: 64, out_channels: 64}", "BACKBONE.TRAIN_LAYERS=[layer4, layer5]",
            "TRAIN.BATCH_SIZE=4", "TRAIN.LR_WARMUP.EPOCH=1"]
PLANS = {
    "gpu": {"device": "cuda", "cfg": R50, "opts": R50_OPTS, "videos": 8, "frames": 40,
            "loader": ["--batch-size", "128", "--batches", "400", "--rounds", "1"],
            "bench": ["--steps", "30", "--warmup", "5"],
            "run": ["TRAIN.EPOCH=2", "BACKBONE.TRAIN_EPOCH=1", "TRAIN.LR_WARMUP.EPOCH=1",
                    "DATASET.VIDEOS_PER_EPOCH=280", "TRAIN.PRINT_FREQ=5", "TRAIN.CKPT_INTERVAL=0"],
            "budgets": {"card": 15, "shards": 25, "gpu_tests": 95, "loader": 35, "train_bench": 70, "train_run": 60}},
    "cpu-dry-run": {"device": "cpu", "cfg": DEMO, "opts": DRY_OPTS, "videos": 4, "frames": 12,
                    "loader": ["--batch-size", "4", "--batches", "2", "--rounds", "1", "--warmup", "1"],
                    "bench": ["--steps", "1", "--warmup", "0", "--profile-steps", "1"],
                    "run": ["TRAIN.EPOCH=2", "DATASET.VIDEOS_PER_EPOCH=4",
                            "TRAIN.PRINT_FREQ=1", "TRAIN.CKPT_INTERVAL=0"],
                    "budgets": {"card": 30, "shards": 60, "gpu_tests": 60, "loader": 60, "train_bench": 90,
                                "train_run": 60}},
}
# The GPU test files; their CPU twins (already run by the CPU suite) and this check's own test are left out.
GPU_TESTS = ["tests/test_train_gpu.py", "tests/test_loader_gpu.py"]
NOT_HERE = ["tests/test_train_gpu.py::test_trainer_across_the_unfreeze_and_resume[cpu]",
            "tests/test_train_gpu.py::test_steady_state_step_has_no_host_sync[cpu]",
            "tests/test_train_gpu.py::test_bench_train_end_to_end[cpu]",
            "tests/test_train_gpu.py::test_gpu_check_cpu_dry_run_end_to_end"]


class Stages:
    """Runs stages as subprocesses within their budgets (and what is left of the total)."""

    def __init__(self, work: Path, total_s: float):
        self.work = work
        self.deadline = time.monotonic() + total_s
        self.results: dict = {}

    def run(self, name: str, cmd: list, budget_s: float) -> str | None:
        """Run ``cmd``; returns its stdout on exit status 0, else None (the stage is recorded as failed)."""
        budget = min(budget_s, self.deadline - time.monotonic())
        entry = self.results[name] = {"command": " ".join(str(c) for c in cmd), "budget_s": round(budget, 1)}
        if budget < 5:
            entry.update(status="skipped", detail="no time left in the 5-minute budget")
            return None
        t0 = time.monotonic()
        log = self.work / f"{name}.log"
        with open(log, "w") as fh:  # the whole output stays on disk; the report keeps the tail
            proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, stdout=subprocess.PIPE, stderr=fh, text=True,
                                    start_new_session=True)
            try:
                out, _ = proc.communicate(timeout=budget)
                status = "ok" if proc.returncode == 0 else "failed"
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the stage and everything it started
                out, _ = proc.communicate()
                status = "timeout"
        entry.update(status=status, seconds=round(time.monotonic() - t0, 1), log=str(log))
        if status != "ok":
            tail = (out or "")[-1500:] + log.read_text()[-2500:]
            entry["detail"] = (f"exit status {proc.returncode}" if status == "failed" else
                               f"stopped after its {budget:.0f} s budget")
            entry["output_tail"] = tail
            return None
        return out

    def record(self, name: str, status: str, detail: str = "", **extra) -> None:
        self.results[name] = {"status": status, "detail": detail, **extra}


def _py(*args):
    return [sys.executable, *args]


def build_shards(stages: Stages, plan: dict, root: Path) -> Path | None:
    """Synthetic VID in its raw layout, then LMDB shards (the project's own tools)."""
    raw, cache = root / "raw", root / "cache"
    budget = plan["budgets"]["shards"]
    t0 = time.monotonic()
    made = stages.run("shards", _py(REPO / "tools" / "make_synthetic.py", "--dataset", "VID", "--out", raw,
                                    "--videos", plan["videos"], "--frames", plan["frames"], "--no-broken", "--force"),
                      budget)
    if made is None:
        return None
    built = stages.run("shards", _py(REPO / "tools" / "build_lmdb.py", "--dataset", "VID", "--root", raw, "--out",
                                     cache, "--no-progress", "--overwrite"), budget - (time.monotonic() - t0))
    return cache if built is not None else None


def card(stages: Stages, plan: dict) -> dict:
    """The card and its peak, in a subprocess: this process never creates a CUDA context (it would
    count in the device-wide memory the benchmarks measure)."""
    code = ("import json, torch; from train.bench import device_peak; d = {d!r}; "
            "assert d == 'cpu' or torch.cuda.is_available(), 'torch sees no CUDA GPU'; "
            "print(json.dumps(device_peak(torch.device(d if d == 'cpu' else 'cuda:0'), amp=True)))")
    out = stages.run("card", _py("-c", code.format(d=plan["device"])), plan["budgets"]["card"])
    if out is None:
        return {"card": None, "device_name": None, "peak_tflops": None}
    info = json.loads(out.strip().splitlines()[-1])
    stages.results["card"].update(info)
    return info


def gpu_tests(stages: Stages, plan: dict) -> dict:
    """pytest on the GPU test files (on the CPU every CUDA test is skipped: it checks collection)."""
    import importlib.util

    if importlib.util.find_spec("pytest") is None:
        stages.record("gpu_tests", "failed", "pytest is not installed for this interpreter")
        return {}
    deselect = [arg for node in NOT_HERE for arg in ("--deselect", node)]
    out = stages.run("gpu_tests", _py("-m", "pytest", "-q", "-p", "no:cacheprovider", *deselect, *GPU_TESTS),
                     plan["budgets"]["gpu_tests"])
    text = out if out is not None else stages.results["gpu_tests"].get("output_tail", "")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", text)}
    stages.results["gpu_tests"]["counts"] = counts
    return counts


def _json_of(stages, name, path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        stages.results[name].update(status="failed", detail=f"no result JSON: {err}")
        return None


def bench_loader(stages: Stages, plan: dict, shards: Path) -> dict | None:
    out = stages.work / "bench_loader.json"
    ran = stages.run("loader", _py(REPO / "tools" / "bench_loader.py", "--shards", shards, "--device", plan["device"],
                                   "--skip-reference", "--json", out, "--cfg", plan["cfg"], *plan["loader"],
                                   "--opts", *plan["opts"]), plan["budgets"]["loader"])
    return _json_of(stages, "loader", out) if ran is not None else None


def bench_train(stages: Stages, plan: dict, shards: Path) -> dict | None:
    out = stages.work / "bench_train.json"
    ran = stages.run("train_bench", _py(REPO / "tools" / "bench_train.py", "--cfg", plan["cfg"], "--shards", shards,
                                        "--device", plan["device"], *plan["bench"], "--json", out,
                                        "--profile-dir", stages.work / "profiles", "--opts", *plan["opts"]),
                     plan["budgets"]["train_bench"])
    return _json_of(stages, "train_bench", out) if ran is not None else None


def train_run(stages: Stages, plan: dict, shards: Path) -> dict | None:
    """A short training run across the unfreeze with the real command; its summary and losses."""
    run_dir = stages.work / "train_run"
    ran = stages.run("train_run", _py(REPO / "train" / "run.py", "--cfg", plan["cfg"], "--shards", shards,
                                      "--out", run_dir, "--device", plan["device"], "--no-progress", "--overwrite",
                                      "--opts", *plan["opts"], *plan["run"]), plan["budgets"]["train_run"])
    if ran is None:
        return None
    summary = _json_of(stages, "train_run", run_dir / "summary.json")
    if summary is None:
        return None
    losses = [json.loads(x).get("total_loss") for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary["losses"] = losses
    if not losses or any(v is None for v in losses) or summary.get("skipped_steps"):
        stages.results["train_run"].update(status="failed", detail=f"non-finite or skipped steps: {losses}")
    return summary


def profile_loader(cfg_path, opts, shards, device, out_path, batches=5) -> None:
    """torch.profiler summary of ``batches`` loader batches (run when the loader target is missed)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from pipeline import build_loader
    from train.config import load_config

    cfg = load_config(cfg_path, opts)
    loader = build_loader(cfg, shards=str(shards), batch_size=128 if device == "cuda" else 8, device=device)
    loader.set_epoch(0)
    it = iter(loader)
    next(it)  # start-up outside the profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(batches):
            next(it)
        if device == "cuda":
            torch.cuda.synchronize()
    sort = "device_time_total" if device == "cuda" else "cpu_time_total"
    Path(out_path).write_text(f"torch.profiler, {batches} loader batches, sorted by {sort}\n"
                              + prof.key_averages().table(sort_by=sort, row_limit=40))


def _row(name, value, target="", status="info", unit="", note=""):
    return {"name": name, "value": value, "target": target, "status": status, "unit": unit, "note": note}


def _judge(measured: bool, value, ok: bool, dry: bool) -> str:
    if not measured:
        return "FAIL"
    if dry:
        return "n/a"
    return "PASS" if value is not None and ok else "MISS"


def build_rows(info, tests, loader, bench, run, stages, dry) -> list:
    """The table: every figure with its target and PASS / MISS (measured, missed) / FAIL (not
    measured: the stage failed) / n/a (dry run) / info."""
    peak = info.get("peak_tflops")
    rows = [_row("card", info.get("card") or info.get("device_name"),
                 note=f"{info.get('device_name')}: dense {info.get('peak_kind')} peak {peak} TFLOP/s" if peak
                 else f"{info.get('device_name')}: no known peak")]
    failed = sum(tests.get(k, 0) for k in ("failed", "error", "errors"))
    ran_tests = stages.results.get("gpu_tests", {}).get("status") == "ok"
    counts = f"{tests.get('passed', 0)} passed, {tests.get('skipped', 0)} skipped, {failed} failed"
    rows.append(_row("GPU tests", counts, "all pass", "PASS" if ran_tests and not failed else "FAIL"))
    dali = (loader or {}).get("dali", {})
    rate, cores = dali.get("pairs_per_s"), dali.get("cpu_cores_busy")
    rows.append(_row("loader pairs/s", rate, f">= {LOADER_MIN_PAIRS_S}",
                     _judge(rate is not None, rate, rate is not None and rate >= LOADER_MIN_PAIRS_S, dry)))
    rows.append(_row("loader CPU cores busy", cores, f"<= {LOADER_MAX_CORES}",
                     _judge(cores is not None, cores, cores is not None and cores <= LOADER_MAX_CORES, dry)))
    phases = (bench or {}).get("phases", {})
    for phase in ("frozen", "unfrozen"):
        entry = phases.get(phase, {})
        real = entry.get("real_loader", {})
        mfu, wait = real.get("mfu"), entry.get("data_wait_frac")
        rows.append(_row(f"{phase} ms/step", real.get("step_ms"), status="info" if real else "FAIL",
                         note=f"in memory: {_fmt(entry.get('synthetic_in_memory', {}).get('step_ms'))} ms"))
        mfu_row = _row(f"{phase} MFU", mfu, f">= {MIN_MFU:.0%}",
                       _judge(bool(real), mfu, mfu is not None and mfu >= MIN_MFU, dry), unit="%",
                       note="unknown card: no peak" if real and mfu is None and not dry else "")
        wait_row = _row(f"{phase} data wait", wait, f"< {MAX_DATA_WAIT:.0%}",
                        _judge(bool(real), wait, wait is not None and wait < MAX_DATA_WAIT, dry), unit="%")
        rows += [mfu_row, wait_row]
        if entry.get("profile") and "MISS" in (mfu_row["status"], wait_row["status"]):
            mfu_row["note"] = f"profile: {entry['profile']}"
        xc = entry.get("xcorr_layout")
        if xc is not None:
            rows.append(_row(f"{phase} xcorr layout copies", xc["share_of_step"], f"< {MAX_XCORR_SHARE:.0%} of a step",
                             _judge(True, xc["share_of_step"], xc["share_of_step"] < MAX_XCORR_SHARE, dry), unit="%",
                             note=f"{xc['round_trip_ms_per_step']:.3f} ms per step, {xc['calls_per_step']} calls"))
    mem = (bench or {}).get("peak_memory", {})
    if "device_used_peak_gib" in mem:
        rows.append(_row("peak memory torch / device", f"{mem['torch_peak_reserved_gib']:.2f} / "
                         f"{mem['device_used_peak_gib']:.2f} GiB",
                         note=f"outside torch (DALI, nvJPEG, CUDA contexts): {mem['outside_torch_gib']:.2f} GiB"))
    elif mem:
        rows.append(_row("peak memory (host RSS)", f"{mem['host_max_rss_gib']:.2f} GiB"))
    ok_run = stages.results.get("train_run", {}).get("status") == "ok"
    losses = (run or {}).get("losses") or []
    rows.append(_row("training run across the unfreeze",
                     f"{run.get('global_step')} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}" if ok_run and losses
                     else None, "exit 0, finite losses", "PASS" if ok_run else "FAIL"))
    return rows


def _fmt(v, unit=""):
    if v is None:
        return "-"
    if unit == "%" and isinstance(v, (int, float)):
        return f"{100 * v:.2f}%"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def print_table(rows, stages) -> str:
    lines = ["| figure | value | target | status | note |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {_fmt(r['value'], r['unit'])} | {r['target']} | {r['status']} | {r['note']} |"
              for r in rows]
    lines.append("")
    lines += [f"stage {name}: {s['status']}" + (f" ({s['seconds']} s)" if "seconds" in s else "")
              + (f" - {s['detail']}" if s.get("detail") else "") for name, s in stages.results.items()]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_report.json", help="the report (JSON)")
    p.add_argument("--shards", default=None, help="existing shard root (with VID/); default: build synthetic ones")
    p.add_argument("--work", default="runs/gpu_check", help="folder for shards, logs, profiles and the training run")
    p.add_argument("--cpu-dry-run", action="store_true", help="the same stages, tiny, on the CPU (targets not judged)")
    p.add_argument("--build-shards-only", action="store_true", help="build the synthetic shards into WORK and stop")
    p.add_argument("--budget", action="append", default=[], metavar="STAGE=SECONDS",
                   help="another time budget for a stage (card, shards, gpu_tests, loader, train_bench, train_run); "
                        "the 5-minute total still applies")
    p.add_argument("--profile-loader", nargs=4, metavar=("CFG", "SHARDS", "DEVICE", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.profile_loader:
        cfg, shards, device, out = args.profile_loader
        profile_loader(cfg, PLANS["cpu-dry-run" if device == "cpu" else "gpu"]["opts"], shards, device, out)
        return 0
    mode = "cpu-dry-run" if args.cpu_dry_run else "gpu"
    plan = {**PLANS[mode], "budgets": dict(PLANS[mode]["budgets"])}
    for item in args.budget:
        stage, _, seconds = item.partition("=")
        if stage not in plan["budgets"] or not seconds.replace(".", "", 1).isdigit():
            p.error(f"--budget {item!r}: expected STAGE=SECONDS with STAGE one of {sorted(plan['budgets'])}")
        plan["budgets"][stage] = float(seconds)
    dry = mode == "cpu-dry-run"
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    stages = Stages(work, TOTAL_BUDGET_S)
    if args.build_shards_only:
        shards = build_shards(stages, plan, work / "shards")
        print(f"shards: {shards}" if shards else f"shards: failed, see {work / 'shards.log'}")
        return 0 if shards else 1

    info = card(stages, plan)
    if args.shards:
        shards = Path(args.shards).resolve()
        stages.record("shards", "given", str(shards))
    else:
        shards = build_shards(stages, plan, work / "shards")
    tests = gpu_tests(stages, plan)
    loader = bench_loader(stages, plan, shards) if shards else None
    bench = bench_train(stages, plan, shards) if shards else None
    run = train_run(stages, plan, shards) if shards else None
    if shards is None:
        for name in ("loader", "train_bench", "train_run"):
            stages.record(name, "skipped", "no shards")
    rows = build_rows(info, tests, loader, bench, run, stages, dry)
    if any(r["name"].startswith("loader") and r["status"] == "MISS" for r in rows):
        prof = work / "profiles" / "profile_loader.txt"
        prof.parent.mkdir(parents=True, exist_ok=True)
        if stages.run("profile_loader", _py(Path(__file__).resolve(), "--profile-loader", plan["cfg"], shards,
                                            plan["device"], prof), 45) is not None:
            rows[[r["name"] for r in rows].index("loader pairs/s")]["note"] = f"profile {prof}"
    table = print_table(rows, stages)
    report = {"mode": mode, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "card": info.get("card"),
              "device_name": info.get("device_name"), "seconds": round(time.monotonic() - started, 1),
              "rows": rows, "stages": stages.results, "table": table,
              "targets": {"loader_min_pairs_s": LOADER_MIN_PAIRS_S, "loader_max_cores": LOADER_MAX_CORES,
                          "min_mfu": MIN_MFU, "max_data_wait": MAX_DATA_WAIT, "max_xcorr_share": MAX_XCORR_SHARE},
              "bench_train": bench, "bench_loader": loader, "train_run": run}
    atomic_write(args.out, json.dumps(report, indent=2, default=str))
    print(f"report: {args.out} ({report['seconds']} s)")
    stages_ok = all(s["status"] in ("ok", "given") for s in stages.results.values())
    targets_ok = all(r["status"] in ("PASS", "info", "n/a") for r in rows)
    return 0 if stages_ok and (dry or targets_ok) else 1


if __name__ == "__main__":
    sys.exit(main())
