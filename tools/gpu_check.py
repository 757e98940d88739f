"""The first run on a GPU, in one command: a figure or a one-line reason for every stage within
5 minutes on one GPU.

    python tools/gpu_check.py [--work runs/gpu_check] [--out REPORT] [--shards DIR] [--opts K=V ...]
    python tools/gpu_check.py --cpu-dry-run               # the same stages, tiny, on the CPU
    python tools/gpu_check.py --build-shards-only         # prepare the shards (e.g. on a CPU machine)
    python -m pytest -m gpu_slow tests/test_train_gpu.py tests/test_loader_gpu.py   # beside it: the
                                                          # compile and end-to-end GPU tests (minutes)

Preflight, before any stage, one line each: a CUDA device (none: said at once, exit status 2,
unless --cpu-dry-run), the NVIDIA driver against the installed nvidia-dali-cuda1xx, a host C
compiler for triton when TRAIN.COMPILE is on, pytest. A failed check names the stages it stops.

Stages, each a subprocess with its own time budget (the budgets add up to less than the 5
minutes; a failure or a timeout is a row of the report, never the end of the check):
  shards       synthetic VID in its raw layout, then LMDB shards; reused when present (--shards,
               or an earlier run's or --build-shards-only's WORK/shards/<mode>/cache)
  gpu_tests    the fast GPU tests (tests/gpu_budget_plugin.py: the tests that need CUDA, each
               within its own time limit, one line per result as it happens)
  loader       tools/bench_loader.py measured for a fixed time: pairs/s and CPU cores busy reached
  train_bench  tools/bench_train.py, frozen and unfrozen, each window time-bounded: ms/step, MFU,
               data wait on the device timeline, the loader's GPU share, xcorr layout copies, memory
  train_run    a short training run across the unfreeze with the real command
  loader_host, profile_loader   on a loader MISS or FAIL: the host side alone (bench_loader
               --host-only) and a torch.profiler summary of loader batches
A stage stopped at its budget still reports what it reached (progress lines, metrics.jsonl).
Prints one table of figures against the targets and writes the report as JSON (default
WORK/gpu_report.json). Exit status 0 when every stage ran and every target was met (dry run: every
stage ran), 2 when preflight finds no CUDA device, else 1.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
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
# Targets on one H100-class GPU, anchored in what GPUs reach: MLPerf-class ResNet-50 training on
# an H100 (DALI, fused kernels, CUDA graphs) runs at ~18% of the dense bf16 peak (~7k images/s x
# ~25 GFLOP per image against 989 TFLOP/s). The frozen phase is reported against the same peak.
LOADER_MIN_PAIRS_S = 10_000
LOADER_MAX_CORES = 2.0
MIN_MFU_UNFROZEN = 0.20
MAX_DATA_WAIT = 0.02  # the mission: the GPU never waits for data
MAX_XCORR_SHARE = 0.01
# Oldest driver for each CUDA major of nvidia-dali-cuda1xx (DALI's install guide: CUDA 11 >= 450.80,
# 12 >= 525.60, 13 >= 580; its wheels run on any driver of their CUDA major).
MIN_DRIVER = {11: (450, 80), 12: (525, 60), 13: (580, 0)}
PER_TEST_TIMEOUT_S = {"gpu": 30, "cpu-dry-run": 60}

R50_OPTS = ["DATASET.NAMES=[VID]", "BACKBONE.PRETRAINED="]
DRY_OPTS = ["DATASET.NAMES=[VID]", "BACKBONE.KWARGS={width_mult: 0.25}", "BACKBONE.TRAIN_EPOCH=1",
            "RPN.KWARGS={anchor_num: 5, in_channels: 64, out_channels: 64}", "BACKBONE.TRAIN_LAYERS=[layer4, layer5]",
            "TRAIN.BATCH_SIZE=4", "TRAIN.LR_WARMUP.EPOCH=1"]
PLANS = {
    "gpu": {"device": "cuda", "cfg": R50, "opts": R50_OPTS, "videos": 8, "frames": 40,
            "loader": ["--batch-size", "128", "--batches", "8", "--min-seconds", "12", "--warmup", "4",
                       "--rounds", "1"],
            "host": ["--batch-size", "128", "--batches", "1", "--min-seconds", "4", "--warmup", "2", "--rounds", "1"],
            "profile_batches": 5,
            "bench": ["--steps", "30", "--warmup", "3", "--max-seconds", "6"],
            "run": ["TRAIN.EPOCH=2", "BACKBONE.TRAIN_EPOCH=1", "TRAIN.LR_WARMUP.EPOCH=1",
                    "DATASET.VIDEOS_PER_EPOCH=280", "TRAIN.PRINT_FREQ=5", "TRAIN.CKPT_INTERVAL=0"],
            # seconds: 285 in all, leaving 15 s of TOTAL_BUDGET_S to the preflight (a stage gets at most what is left)
            "budgets": {"shards_raw": 20, "shards_lmdb": 30, "gpu_tests": 70, "loader": 35, "train_bench": 60,
                        "train_run": 40, "loader_host": 12, "profile_loader": 18}},
    "cpu-dry-run": {"device": "cpu", "cfg": DEMO, "opts": DRY_OPTS, "videos": 4, "frames": 12,
                    "loader": ["--batch-size", "4", "--batches", "2", "--min-seconds", "2", "--warmup", "1",
                               "--rounds", "1"],
                    "host": ["--batch-size", "4", "--batches", "2", "--min-seconds", "1", "--warmup", "1",
                             "--rounds", "1"],
                    "profile_batches": 2,
                    "bench": ["--steps", "1", "--warmup", "0", "--profile-steps", "1", "--max-seconds", "20"],
                    "run": ["TRAIN.EPOCH=2", "DATASET.VIDEOS_PER_EPOCH=4",
                            "TRAIN.PRINT_FREQ=1", "TRAIN.CKPT_INTERVAL=0"],
                    "budgets": {"shards_raw": 30, "shards_lmdb": 60, "gpu_tests": 60, "loader": 60, "train_bench": 90,
                                "train_run": 60, "loader_host": 30, "profile_loader": 45}},
}
GPU_TESTS = ["tests/test_train_gpu.py", "tests/test_loader_gpu.py"]
LOADER_STAGES = ("gpu_tests", "loader", "train_bench", "train_run")  # every one of them runs DALI


# ---- stages ------------------------------------------------------------------------------------------
class Stages:
    """Runs stages as subprocesses within their budgets (and what is left of the total); keeps what
    each printed, also when it was stopped."""

    def __init__(self, work: Path, total_s: float):
        self.work = work
        self.deadline = time.monotonic() + total_s
        self.results: dict = {}
        self.stdout: dict = {}   # stage -> what it printed on stdout (also when stopped)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, cmd: list, budget_s: float, env: dict | None = None) -> str | None:
        """Run ``cmd``; returns its stdout on exit status 0, else None (the stage is recorded as failed,
        stopped or skipped, with a one-line reason)."""
        budget = min(budget_s, self.left())
        entry = self.results[name] = {"command": " ".join(str(c) for c in cmd), "budget_s": round(budget, 1)}
        if budget < 5:
            entry.update(status="skipped", detail="no time left in the 5-minute budget")
            return None
        t0 = time.monotonic()
        log = self.work / f"{name}.log"
        out_path = self.work / f"{name}.out"
        with open(log, "w") as err, open(out_path, "w") as out:  # everything stays on disk
            # cwd is the work folder: whatever a tool or pytest plugin writes relative to its working
            # directory (.benchmarks, .pytest_cache, runs/) lands there, never in the checkout's root
            proc = subprocess.Popen([str(c) for c in cmd], cwd=self.work, stdout=out, stderr=err, text=True,
                                    start_new_session=True, env=env)
            try:
                proc.wait(timeout=budget)
                status = "ok" if proc.returncode == 0 else "failed"
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the stage and everything it started
                proc.wait()
                status = "timeout"
        self.stdout[name] = out_path.read_text()
        entry.update(status=status, seconds=round(time.monotonic() - t0, 1), log=str(log))
        if status == "ok":
            return self.stdout[name]
        entry["detail"] = (f"exit status {proc.returncode}" if status == "failed"
                           else f"stopped after its {budget:.0f} s budget")
        entry["output_tail"] = self.stdout[name][-1500:] + log.read_text()[-2500:]
        return None

    def log_text(self, name: str) -> str:
        path = self.results.get(name, {}).get("log")
        return Path(path).read_text() if path and Path(path).exists() else ""

    def record(self, name: str, status: str, detail: str = "", **extra) -> None:
        self.results[name] = {"status": status, "detail": detail, **extra}


def _py(*args):
    return [sys.executable, *args]


# ---- preflight -----------------------------------------------------------------------------------------
class Probes:
    """What the preflight asks of the machine (tests substitute their own)."""

    def cuda(self, timeout_s: float = 30) -> dict:
        """The GPU as torch sees it, from a subprocess: this process never creates a CUDA context (it
        would count in the device-wide memory the benchmarks measure)."""
        code = ("import json, torch\nfrom train.gpu_peaks import card_peak\nok = torch.cuda.is_available()\n"
                "info = {'torch': torch.__version__, 'torch_cuda': torch.version.cuda, 'available': ok, "
                "'count': torch.cuda.device_count() if ok else 0}\n"
                "if ok:\n    p = torch.cuda.get_device_properties(0)\n"
                "    found = card_peak(p.name, p.multi_processor_count, p.total_memory)\n"
                "    info.update(device_name=p.name, card=found.card if found else None, peak_kind='bf16', "
                "peak_tflops=found.peak(True) if found else None)\n"
                "print(json.dumps(info))")
        try:
            done = subprocess.run(_py("-c", code), cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"available": False, "error": f"torch's CUDA probe did not answer within {timeout_s:.0f} s"}
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            return {"available": False, "error": f"torch's CUDA probe failed: {last}"}
        return json.loads(done.stdout.strip().splitlines()[-1])

    def driver(self) -> dict:
        """The NVIDIA driver's version and the CUDA version it supports (nvidia-smi, else /proc)."""
        info = {}
        smi = shutil.which("nvidia-smi")
        if smi:
            try:
                text = subprocess.run([smi], capture_output=True, text=True, timeout=15).stdout
            except (subprocess.TimeoutExpired, OSError):
                text = ""
            if m := re.search(r"Driver Version:\s*([\d.]+)", text):
                info["version"] = m.group(1)
            if m := re.search(r"CUDA Version:\s*([\d.]+)", text):
                info["cuda"] = m.group(1)
        if "version" not in info:
            try:
                text = Path("/proc/driver/nvidia/version").read_text()
            except OSError:
                text = ""
            if m := re.search(r"Kernel Module\s+([\d.]+)", text):
                info["version"] = m.group(1)
        return info

    def dali(self) -> dict:
        """The installed nvidia-dali-cudaXXX and its CUDA major, without importing DALI."""
        for dist in importlib.metadata.distributions():
            name = (dist.metadata["Name"] or "").lower()
            if m := re.fullmatch(r"nvidia-dali-cuda(\d+)", name):
                return {"package": name, "version": dist.version, "cuda_major": int(m.group(1)) // 10}
        spec = importlib.util.find_spec("nvidia.dali")  # unpacked without metadata (a copied site folder)
        if spec is None or spec.origin is None:
            return {"error": "nvidia.dali is not importable by this interpreter"}
        m = re.search(r"__cuda_version__\s*=\s*int\('(\d+)\.", Path(spec.origin).read_text())
        if m is None:
            return {"error": f"{spec.origin}: no __cuda_version__"}
        return {"package": "nvidia-dali (no package metadata)", "version": "?", "cuda_major": int(m.group(1))}

    def c_compiler(self) -> str | None:
        from train.preflight import triton_c_compiler
        return triton_c_compiler()

    def has_pytest(self) -> bool:
        return importlib.util.find_spec("pytest") is not None


def _version(text: str) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:2])


def _check(name, ok, line, blocks=(), fatal=False) -> dict:
    return {"name": name, "ok": bool(ok), "line": line, "blocks": list(blocks), "fatal": bool(fatal)}


def preflight(probes, dry: bool, compile_on: bool) -> tuple[list, dict]:
    """The checks, one line each, and the card's facts (torch's view of GPU 0)."""
    checks, card = [], {}
    if dry:
        checks.append(_check("CUDA device", True, "CPU dry run: no GPU needed"))
    else:
        card = probes.cuda()
        if not card.get("available") or not card.get("count"):
            why = card.get("error") or (f"torch {card.get('torch')} (CUDA build {card.get('torch_cuda')}) "
                                        f"sees no GPU")
            checks.append(_check("CUDA device", False, f"no CUDA device: {why}; run on a GPU host, or use "
                                                       f"--cpu-dry-run", fatal=True))
            return checks, card
        checks.append(_check("CUDA device", True, f"{card.get('device_name')} ({card['count']} visible; torch "
                                                  f"{card.get('torch')}, CUDA {card.get('torch_cuda')})"))
        checks.append(_driver_check(probes.driver(), probes.dali()))
        if compile_on:
            cc = probes.c_compiler()
            checks.append(_check("C compiler", cc is not None,
                                 f"TRAIN.COMPILE: triton builds its launchers with {cc}" if cc else
                                 "TRAIN.COMPILE=True but no host C compiler for triton ($CC, gcc, clang): install "
                                 "gcc, or --opts TRAIN.COMPILE=False", blocks=("train_bench", "train_run")))
    has = probes.has_pytest()
    checks.append(_check("pytest", has, "pytest is installed" if has else
                         f"pytest is not installed for {sys.executable}: pip install pytest",
                         blocks=("gpu_tests",)))
    return checks, card


def _driver_check(driver: dict, dali: dict) -> dict:
    if "error" in dali:
        return _check("driver and DALI", False, f"DALI: {dali['error']}", blocks=LOADER_STAGES)
    major = dali["cuda_major"]
    need = MIN_DRIVER.get(major)
    what = f"{dali['package']} {dali['version']} needs CUDA {major}"
    if "cuda" in driver and _version(driver["cuda"])[0] < major:
        return _check("driver and DALI", False, f"driver {driver.get('version', '?')} supports CUDA {driver['cuda']}; "
                                                f"{what} (driver >= {'.'.join(map(str, need or ()))}): update the "
                                                f"driver or install nvidia-dali-cuda{_version(driver['cuda'])[0]}0",
                      blocks=LOADER_STAGES)
    if "version" in driver and need and _version(driver["version"]) < need:
        return _check("driver and DALI", False, f"driver {driver['version']} is older than {need[0]}.{need[1]}, "
                                                f"the oldest for {what}", blocks=LOADER_STAGES)
    if not driver:
        return _check("driver and DALI", True, f"{what}; driver version unknown (no nvidia-smi or /proc entry)")
    return _check("driver and DALI", True, f"driver {driver.get('version', '?')} (CUDA {driver.get('cuda', '?')}); "
                                           f"{what}")


# ---- the stages' commands and figures ----------------------------------------------------------------------
def find_shards(work: Path, mode: str) -> Path:
    return work / "shards" / mode / "cache"


def shards_ready(cache: Path) -> bool:
    return (cache / "VID" / "index.msgpack").is_file()


def build_shards(stages: Stages, plan: dict, root: Path) -> Path | None:
    """Synthetic VID in its raw layout, then LMDB shards (the project's own tools), each step with
    its own budget."""
    raw, cache = root / "raw", root / "cache"
    made = stages.run("shards_raw", _py(REPO / "tools" / "make_synthetic.py", "--dataset", "VID", "--out", raw,
                                        "--videos", plan["videos"], "--frames", plan["frames"], "--no-broken",
                                        "--force"), plan["budgets"]["shards_raw"])
    if made is None:
        return None
    built = stages.run("shards_lmdb", _py(REPO / "tools" / "build_lmdb.py", "--dataset", "VID", "--root", raw,
                                          "--out", cache, "--no-progress", "--overwrite"),
                       plan["budgets"]["shards_lmdb"])
    return cache if built is not None and shards_ready(cache) else None


def test_counts(text: str) -> dict:
    """Counts from gpu_budget_plugin's lines; a test's last line wins (a teardown error after a pass)."""
    final = {}
    # (anywhere in a line: pytest's progress characters may precede a line on the same row)
    for outcome, node in re.findall(r"gpu-test (passed|failed|skipped|error|timeout) (\S+)", text):
        final[node] = outcome
    counts = {k: 0 for k in ("passed", "failed", "skipped", "error", "timeout")}
    for outcome in final.values():
        counts[outcome] += 1
    collected = re.findall(r"gpu-test collected (\d+)", text)
    counts["collected"] = int(collected[-1]) if collected else None
    return counts


def gpu_tests(stages: Stages, plan: dict, mode: str) -> dict:
    """The fast GPU tests, each within its own limit; counts as far as they got."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = _py("-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "gpu_budget_plugin", "--cuda-only",
              "--per-test-timeout", PER_TEST_TIMEOUT_S[mode], "--stuck-traceback", stages.work / "gpu_tests_stuck.txt",
              "-m", "not benchmark and not gpu_slow", *(REPO / t for t in GPU_TESTS))
    stages.run("gpu_tests", cmd, plan["budgets"]["gpu_tests"], env=env)
    counts = test_counts(stages.stdout.get("gpu_tests", ""))
    stages.results["gpu_tests"]["counts"] = counts
    return counts


def _json_file(path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _last_progress(text: str, prefix: str) -> dict | None:
    lines = [line[len(prefix):] for line in text.splitlines() if line.startswith(prefix)]
    return json.loads(lines[-1]) if lines else None


def bench_loader(stages: Stages, plan: dict, shards: Path) -> dict | None:
    """Loader pairs/s for a fixed time; a stopped stage gives the rate its progress lines reached."""
    out = stages.work / "bench_loader.json"
    ran = stages.run("loader", _py(REPO / "tools" / "bench_loader.py", "--shards", shards, "--device", plan["device"],
                                   "--skip-reference", "--progress", "--json", out, "--cfg", plan["cfg"],
                                   *plan["loader"], "--opts", *plan["opts"]), plan["budgets"]["loader"])
    if ran is not None:
        result = _json_file(out)
        if result is None:
            stages.results["loader"].update(status="failed", detail=f"no result JSON at {out}")
        return result
    reached = _last_progress(stages.log_text("loader"), "bench_loader progress ")
    if reached is not None:
        stages.results["loader"]["reached"] = reached
    return None


def bench_train(stages: Stages, plan: dict, shards: Path, opts: list) -> dict | None:
    """Training figures per phase; a stopped stage keeps the phases it finished."""
    out = stages.work / "bench_train.json"
    ran = stages.run("train_bench", _py(REPO / "tools" / "bench_train.py", "--cfg", plan["cfg"], "--shards", shards,
                                        "--device", plan["device"], *plan["bench"], "--json", out,
                                        "--profile-dir", stages.work / "profiles", "--opts", *opts),
                     plan["budgets"]["train_bench"])
    if ran is not None:
        result = _json_file(out)
        if result is None:
            stages.results["train_bench"].update(status="failed", detail=f"no result JSON at {out}")
        return result
    phases = {}
    for line in stages.log_text("train_bench").splitlines():
        if m := re.match(r"bench_train phase (\w+) (.*)$", line):
            phases[m.group(1)] = json.loads(m.group(2))
    return {"phases": phases, "partial": True} if phases else None


def _losses(run_dir: Path) -> list:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    return [json.loads(x).get("total_loss") for x in lines if x.strip()]


def train_run(stages: Stages, plan: dict, shards: Path, opts: list) -> dict | None:
    """A short training run across the unfreeze with the real command; its summary and losses (the
    losses recorded so far when it was stopped)."""
    run_dir = stages.work / "train_run"
    ran = stages.run("train_run", _py(REPO / "train" / "run.py", "--cfg", plan["cfg"], "--shards", shards,
                                      "--out", run_dir, "--device", plan["device"], "--no-progress", "--overwrite",
                                      "--opts", *opts, *plan["run"]), plan["budgets"]["train_run"])
    losses = _losses(run_dir)
    if ran is None:
        if losses:
            stages.results["train_run"]["reached"] = f"{len(losses)} metric records before it stopped"
        return {"losses": losses, "partial": True} if losses else None
    summary = _json_file(run_dir / "summary.json")
    if summary is None:
        stages.results["train_run"].update(status="failed", detail=f"no {run_dir / 'summary.json'}")
        return None
    summary["losses"] = losses
    if not losses or any(v is None for v in losses) or summary.get("skipped_steps"):
        stages.results["train_run"].update(status="failed", detail=f"non-finite or skipped steps: {losses}")
    return summary


def profile_loader(cfg_path, opts, shards, device, out_path, batches=5, max_seconds=8.0) -> None:
    """torch.profiler summary of at most ``batches`` loader batches or ``max_seconds`` (whichever first)."""
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
    t0, n = time.monotonic(), 0
    with profile(activities=acts) as prof:
        while n < batches and time.monotonic() - t0 < max_seconds:
            next(it)
            n += 1
        if device == "cuda":
            torch.cuda.synchronize()
    sort = "device_time_total" if device == "cuda" else "cpu_time_total"
    Path(out_path).write_text(f"torch.profiler, {n} loader batches, sorted by {sort}\n"
                              + prof.key_averages().table(sort_by=sort, row_limit=40))


def diagnose_loader(stages: Stages, plan: dict, shards: Path, opts: list) -> dict:
    """After a loader MISS or FAIL: the host side alone, and a profile of loader batches."""
    found = {}
    out = stages.work / "bench_loader_host.json"
    if stages.run("loader_host", _py(REPO / "tools" / "bench_loader.py", "--host-only", "--shards", shards,
                                     "--json", out, "--cfg", plan["cfg"], *plan["host"], "--opts", *opts),
                  plan["budgets"]["loader_host"]) is not None:
        found["host"] = (_json_file(out) or {}).get("host_only")
    prof = stages.work / "profiles" / "profile_loader.txt"
    prof.parent.mkdir(parents=True, exist_ok=True)
    if stages.run("profile_loader", _py(REPO / "tools" / "gpu_check.py", "--profile-loader", plan["cfg"], shards,
                                        plan["device"], prof, "--opts", *opts),
                  plan["budgets"]["profile_loader"]) is not None:
        found["profile"] = str(prof)
    return found


# ---- the table -------------------------------------------------------------------------------------------
def _row(name, value, target="", status="info", unit="", note=""):
    return {"name": name, "value": value, "target": target, "status": status, "unit": unit, "note": note}


def _judge(measured: bool, value, ok: bool, dry: bool) -> str:
    if not measured:
        return "FAIL"
    if dry:
        return "n/a"
    return "PASS" if value is not None and ok else "MISS"


def _stage_reason(stages: Stages, *names) -> str:
    """One line: why the first of `names` that did not end ok gave no figure."""
    for name in names:
        s = stages.results.get(name)
        if s is None:
            return f"stage {name} did not run"
        if s.get("status") not in ("ok", "given", "reused"):
            return f"stage {name} {s.get('status')}: {s.get('detail', '')}".rstrip(": ")
    return ""


def tests_row(tests: dict, stages: Stages, dry: bool) -> dict:
    failed = tests.get("failed", 0) + tests.get("error", 0) + tests.get("timeout", 0)
    text = (f"{tests.get('passed', 0)} passed, {tests.get('skipped', 0)} skipped, {tests.get('failed', 0)} failed, "
            f"{tests.get('error', 0)} errors, {tests.get('timeout', 0)} over their limit"
            f" (of {tests.get('collected')})")
    stage = stages.results.get("gpu_tests", {})
    if stage.get("status") in (None, "skipped"):
        return _row("GPU tests", None, "all pass", "FAIL", note=_stage_reason(stages, "gpu_tests"))
    if dry:  # on the CPU every CUDA test skips: collection and the plugin are what is checked
        return _row("GPU tests", text, "all pass", "n/a" if stage.get("status") == "ok" and not failed else "FAIL",
                    note="CPU dry run: the CUDA tests are collected and skipped")
    ran_all = tests.get("collected") is not None and tests.get("passed", 0) == tests.get("collected")
    ok = stage.get("status") == "ok" and not failed and not tests.get("skipped") and ran_all and tests.get("passed")
    note = "" if ok else ("a skipped GPU test is not a pass" if tests.get("skipped") else
                          _stage_reason(stages, "gpu_tests"))
    return _row("GPU tests", text, "all pass", "PASS" if ok else "FAIL", note=note)


def loader_rows(loader, stages: Stages, dry: bool) -> list:
    dali = (loader or {}).get("dali", {})
    reached = stages.results.get("loader", {}).get("reached")
    rate, cores = dali.get("pairs_per_s"), dali.get("cpu_cores_busy")
    note = ""
    if rate is None and reached:
        rate = reached["pairs_per_s"]
        note = f"reached before the stage stopped (host clock, {reached['batches']} batches)"
    elif rate is None:
        note = _stage_reason(stages, "shards", "loader")
    rows = [_row("loader pairs/s", rate, f">= {LOADER_MIN_PAIRS_S}",
                 _judge(rate is not None, rate, rate is not None and rate >= LOADER_MIN_PAIRS_S, dry), note=note),
            _row("loader CPU cores busy", cores, f"<= {LOADER_MAX_CORES}",
                 _judge(cores is not None, cores, cores is not None and cores <= LOADER_MAX_CORES, dry),
                 note=f"{dali['num_threads']} DALI threads: {dali.get('threads_why', '')}" if dali else
                 _stage_reason(stages, "shards", "loader"))]
    if dali:
        rows.append(_row("loader JPEG hardware share", dali.get("hw_decoder_load"), note=dali.get("hw_decoder_why", "")))
    return rows


def phase_rows(bench: dict, stages: Stages, dry: bool) -> list:
    rows = []
    phases = (bench or {}).get("phases", {})
    reason = _stage_reason(stages, "shards", "train_bench")
    for phase in ("frozen", "unfrozen"):
        entry = phases.get(phase, {})
        real = entry.get("real_loader", {})
        why = "" if real else (reason or f"no {phase} figures")
        mfu, wait = real.get("mfu"), entry.get("data_wait_frac")
        rows.append(_row(f"{phase} ms/step", real.get("step_ms"), status="info" if real else "FAIL",
                         note=f"in memory: {_fmt(entry.get('synthetic_in_memory', {}).get('step_ms'))} ms" if real
                         else why))
        if phase == "unfrozen":
            mfu_row = _row("unfrozen MFU", mfu, f">= {MIN_MFU_UNFROZEN:.0%}",
                           _judge(bool(real), mfu, mfu is not None and mfu >= MIN_MFU_UNFROZEN, dry), unit="%",
                           note=why or ("unknown card: no peak" if mfu is None and not dry else ""))
        else:  # reported against the same peak, not judged (a frozen backbone has no backward)
            mfu_row = _row("frozen MFU", mfu, "(same peak)", "info" if real else "FAIL", unit="%", note=why)
        wait_row = _row(f"{phase} data wait", wait, f"< {MAX_DATA_WAIT:.0%}",
                        _judge(bool(real), wait, wait is not None and wait < MAX_DATA_WAIT, dry), unit="%",
                        note=why or ("host clock" if dry else "device timeline (CUDA events)"))
        rows += [mfu_row, wait_row]
        if entry.get("profile") and "MISS" in (mfu_row["status"], wait_row["status"]):
            mfu_row["note"] = f"profile: {entry['profile']}"
        if "loader_gpu_frac" in entry:
            rows.append(_row(f"{phase} loader GPU share", entry["loader_gpu_frac"], unit="%",
                             note="DALI, copies and label kernels on the GPU: compute shared with training"))
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
    return rows


def build_rows(info, tests, loader, bench, run, stages, dry) -> list:
    """The table: every figure with its target and PASS / MISS (measured, missed) / FAIL (not
    measured: the note says why) / n/a (dry run) / info."""
    peak = info.get("peak_tflops")
    rows = [_row("card", info.get("card") or info.get("device_name"),
                 note=f"{info.get('device_name')}: dense {info.get('peak_kind')} peak {peak} TFLOP/s" if peak
                 else f"{info.get('device_name')}: no known peak")]
    rows.append(tests_row(tests, stages, dry))
    rows += loader_rows(loader, stages, dry)
    rows += phase_rows(bench or {}, stages, dry)
    ok_run = stages.results.get("train_run", {}).get("status") == "ok"
    losses = (run or {}).get("losses") or []
    if ok_run and losses:
        value, note = f"{run.get('global_step')} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}", ""
    elif losses:
        value, note = f"{len(losses)} records, loss {losses[0]} -> {losses[-1]}", _stage_reason(stages, "train_run")
    else:
        value, note = None, _stage_reason(stages, "shards", "train_run")
    rows.append(_row("training run across the unfreeze", value, "exit 0, finite losses", "PASS" if ok_run else "FAIL",
                     note=note))
    return rows


def _fmt(v, unit=""):
    if v is None:
        return "-"
    if unit == "%" and isinstance(v, (int, float)):
        return f"{100 * v:.2f}%"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def print_table(rows, stages, checks=()) -> str:
    lines = [f"preflight {c['name']}: {'ok' if c['ok'] else 'FAIL'} - {c['line']}" for c in checks]
    lines += ["", "| figure | value | target | status | note |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {_fmt(r['value'], r['unit'])} | {r['target']} | {r['status']} | {r['note']} |"
              for r in rows]
    lines.append("")
    lines += [f"stage {name}: {s['status']}" + (f" ({s['seconds']} s)" if "seconds" in s else "")
              + (f" - {s['detail']}" if s.get("detail") else "") for name, s in stages.results.items()]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


# ---- the check -------------------------------------------------------------------------------------------
def _compile_on(plan: dict, opts: list) -> bool:
    from train.config import load_config
    return bool(load_config(plan["cfg"], opts).TRAIN.COMPILE)


def run_check(args, plan: dict, mode: str, probes, work: Path, report_path: Path) -> int:
    dry = mode == "cpu-dry-run"
    opts = [*plan["opts"], *args.opts]
    started = time.monotonic()
    checks, info = preflight(probes, dry, _compile_on(plan, opts))
    for c in checks:
        print(f"preflight {c['name']}: {'ok' if c['ok'] else 'FAIL'} - {c['line']}", flush=True)
    if any(c["fatal"] for c in checks):
        return 2
    if dry:
        info = {"card": "cpu", "device_name": "cpu", "peak_tflops": None}
    stages = Stages(work, TOTAL_BUDGET_S - (time.monotonic() - started))
    blocked = {stage: c["line"] for c in checks if not c["ok"] for stage in c["blocks"]}
    shards = None

    def runnable(name) -> bool:
        if name in blocked:
            stages.record(name, "skipped", f"preflight: {blocked[name]}")
            return False
        if shards is None and name != "gpu_tests":
            stages.record(name, "skipped", f"no shards ({_stage_reason(stages, 'shards_raw', 'shards_lmdb')})")
            return False
        return True

    if args.shards:
        shards = Path(args.shards).resolve()
        stages.record("shards", "given", str(shards))
    elif shards_ready(find_shards(work, mode)):
        shards = find_shards(work, mode)
        stages.record("shards", "reused", str(shards))
    else:
        shards = build_shards(stages, plan, find_shards(work, mode).parent)
        stages.record("shards", "ok" if shards else "failed",
                      str(shards) if shards else _stage_reason(stages, "shards_raw", "shards_lmdb"))
    tests = gpu_tests(stages, plan, mode) if runnable("gpu_tests") else {}
    loader = bench_loader(stages, plan, shards) if runnable("loader") else None
    bench = bench_train(stages, plan, shards, opts) if runnable("train_bench") else None
    run = train_run(stages, plan, shards, opts) if runnable("train_run") else None
    rows = build_rows(info, tests, loader, bench, run, stages, dry)
    by_name = {r["name"]: r for r in rows}
    diagnose = {"MISS", "FAIL"} | ({"n/a"} if dry else set())  # the dry run exercises the diagnosis too
    if shards is not None and "loader" not in blocked and by_name["loader pairs/s"]["status"] in diagnose:
        found = diagnose_loader(stages, plan, shards, opts)
        host = found.get("host")
        rows.append(_row("loader host side alone", host and host["host_us_per_pair"], "<= 200 us/pair",
                         _judge(host is not None, host, host is not None and host["host_us_per_pair"] <= 200, dry),
                         note=(f"one core feeds {host['one_core_pairs_per_s']:.0f} pairs/s, two "
                               f"{host['two_cores_pairs_per_s']:.0f}" if host else
                               _stage_reason(stages, "loader_host"))))
        if found.get("profile"):
            by_name["loader pairs/s"]["note"] = (by_name["loader pairs/s"]["note"] + f"; profile {found['profile']}").lstrip("; ")
    table = print_table(rows, stages, checks)
    report = {"mode": mode, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "card": info.get("card"),
              "device_name": info.get("device_name"), "seconds": round(time.monotonic() - started, 1),
              "preflight": checks, "rows": rows, "stages": stages.results, "table": table,
              "targets": {"loader_min_pairs_s": LOADER_MIN_PAIRS_S, "loader_max_cores": LOADER_MAX_CORES,
                          "min_mfu_unfrozen": MIN_MFU_UNFROZEN, "max_data_wait": MAX_DATA_WAIT,
                          "max_xcorr_share": MAX_XCORR_SHARE},
              "bench_train": bench, "bench_loader": loader, "train_run": run}
    atomic_write(report_path, json.dumps(report, indent=2, default=str))
    print(f"report: {report_path} ({report['seconds']} s)")
    stages_ok = all(s["status"] in ("ok", "given", "reused") for s in stages.results.values())
    targets_ok = all(r["status"] in ("PASS", "info", "n/a") for r in rows)
    return 0 if stages_ok and targets_ok and all(c["ok"] for c in checks) else 1


def main(argv=None, probes=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(REPO / "runs" / "gpu_check"),
                   help="folder for shards, logs, profiles, the training run and the report (default runs/gpu_check)")
    p.add_argument("--out", default=None, help="the report (JSON; default WORK/gpu_report.json)")
    p.add_argument("--shards", default=None, help="existing shard root (with VID/); default: WORK's, else built")
    p.add_argument("--cpu-dry-run", action="store_true", help="the same stages, tiny, on the CPU (targets not judged)")
    p.add_argument("--build-shards-only", action="store_true", help="build the synthetic shards into WORK and stop")
    p.add_argument("--budget", action="append", default=[], metavar="STAGE=SECONDS",
                   help="another time budget for a stage (shards_raw, shards_lmdb, gpu_tests, loader, train_bench, "
                        "train_run, loader_host, profile_loader); the 5-minute total still applies")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VAL",
                   help="config overrides for the training stages, e.g. TRAIN.COMPILE=True")
    p.add_argument("--profile-loader", nargs=4, metavar=("CFG", "SHARDS", "DEVICE", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    mode = "cpu-dry-run" if args.cpu_dry_run else "gpu"
    plan = {**PLANS[mode], "budgets": dict(PLANS[mode]["budgets"])}
    if args.profile_loader:
        cfg, shards, device, out = args.profile_loader
        profile_loader(cfg, args.opts, shards, device, out, batches=PLANS["gpu" if device == "cuda" else
                                                                         "cpu-dry-run"]["profile_batches"])
        return 0
    for item in args.budget:
        stage, _, seconds = item.partition("=")
        if stage not in plan["budgets"] or not seconds.replace(".", "", 1).isdigit():
            p.error(f"--budget {item!r}: expected STAGE=SECONDS with STAGE one of {sorted(plan['budgets'])}")
        plan["budgets"][stage] = float(seconds)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.build_shards_only:
        stages = Stages(work, TOTAL_BUDGET_S)
        shards = build_shards(stages, plan, find_shards(work, mode).parent)
        print(f"shards: {shards}" if shards else f"shards: failed: {_stage_reason(stages, 'shards_raw', 'shards_lmdb')}")
        return 0 if shards else 1
    report = Path(args.out).resolve() if args.out else work / "gpu_report.json"
    from train.config import ConfigError
    try:
        return run_check(args, plan, mode, probes or Probes(), work, report)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
