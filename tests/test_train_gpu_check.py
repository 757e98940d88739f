"""tools/gpu_check.py's own logic, fast: a stage that fails or overruns its budget becomes a row
of the report (never the end of the check), and figures are judged against the targets.
The whole check runs end to end in tests/test_train_gpu.py::test_gpu_check_cpu_dry_run_end_to_end."""
import importlib.util
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def test_failed_and_overrunning_stages_are_recorded_and_killed(tmp_path):
    stages = gpu_check.Stages(tmp_path, total_s=60)
    assert stages.run("fine", [sys.executable, "-c", "print('figures')"], 20).strip() == "figures"
    assert stages.run("broken", [sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"],
                      20) is None
    t0 = time.monotonic()
    child = tmp_path / "child.pid"
    # a stage that starts a child and hangs: both are killed at the budget
    hang = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            f"open({str(child)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    assert stages.run("hangs", [sys.executable, "-c", hang], 6) is None
    assert time.monotonic() - t0 < 30
    r = stages.results
    assert r["fine"]["status"] == "ok"
    assert r["broken"]["status"] == "failed" and "exit status 3" in r["broken"]["detail"]
    assert "boom" in r["broken"]["output_tail"]
    assert r["hangs"]["status"] == "timeout"
    pid = int(child.read_text())
    time.sleep(0.5)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    stages.deadline = time.monotonic() + 2  # the 5-minute budget is spent: later stages are skipped, not run
    assert stages.run("late", [sys.executable, "-c", "pass"], 20) is None and r["late"]["status"] == "skipped"


def _bench(mfu, wait, xcorr_share):
    phase = {"real_loader": {"step_ms": 20.0, "mfu": mfu}, "synthetic_in_memory": {"step_ms": 19.8},
             "data_wait_frac": wait, "profile": "runs/p.txt",
             "xcorr_layout": {"share_of_step": xcorr_share, "round_trip_ms_per_step": 0.1, "calls_per_step": 6}}
    return {"phases": {"frozen": phase, "unfrozen": dict(phase)},
            "peak_memory": {"torch_peak_reserved_gib": 10.0, "device_used_peak_gib": 12.5, "outside_torch_gib": 2.5}}


def test_figures_are_judged_against_the_targets(tmp_path):
    stages = gpu_check.Stages(tmp_path, total_s=60)
    for name in ("gpu_tests", "train_run"):
        stages.record(name, "ok")
    info = {"card": "H100 SXM", "device_name": "NVIDIA H100 80GB HBM3", "peak_tflops": 989.4, "peak_kind": "bf16"}
    run = {"global_step": 20, "losses": [3.0, 2.5]}
    loader = {"dali": {"pairs_per_s": 12000.0, "cpu_cores_busy": 1.5}}
    rows = {r["name"]: r for r in gpu_check.build_rows(info, {"passed": 9}, loader, _bench(0.45, 0.01, 0.004),
                                                       run, stages, dry=False)}
    assert all(r["status"] in ("PASS", "info") for r in rows.values()), rows
    missed = {r["name"]: r for r in gpu_check.build_rows(
        info, {"passed": 8, "failed": 1}, {"dali": {"pairs_per_s": 9000.0, "cpu_cores_busy": 2.5}},
        _bench(0.30, 0.05, 0.02), run, stages, dry=False)}
    for name in ("loader pairs/s", "loader CPU cores busy", "frozen MFU", "unfrozen data wait",
                 "frozen xcorr layout copies"):
        assert missed[name]["status"] == "MISS", name
    assert missed["GPU tests"]["status"] == "FAIL"
    assert missed["frozen MFU"]["note"] == "profile: runs/p.txt"  # a missed target points at its profile
    # a stage that never produced its figures: FAIL, not a crash; a dry run judges nothing
    failed = {r["name"]: r for r in gpu_check.build_rows(info, {}, None, None, None, stages, dry=False)}
    assert failed["loader pairs/s"]["status"] == failed["frozen MFU"]["status"] == "FAIL"
    dry = {r["name"]: r for r in gpu_check.build_rows(info, {"passed": 1}, loader, _bench(None, 0.3, 0.5), run,
                                                      stages, dry=True)}
    assert dry["frozen MFU"]["status"] == dry["loader pairs/s"]["status"] == "n/a"
    assert "| frozen MFU | 45.00% | >= 40% | PASS |" in gpu_check.print_table(list(rows.values()), stages)
