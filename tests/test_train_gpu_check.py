"""tools/gpu_check.py's own logic, fast: the preflight with fake environment probes, the stage
budgets with fake stage commands (scripts that sleep, fail, or stop half-way), and the figures
judged against the targets. The real check runs end to end on the CPU in
tests/test_train_gpu.py::test_gpu_check_cpu_dry_run_end_to_end (a benchmark)."""
import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


class FakeProbes:
    """The machine as the preflight would see it, set by each test."""

    def __init__(self, cuda=True, driver=None, dali=None, cc="/usr/bin/gcc", pytest_=True):
        self._cuda = ({"available": True, "count": 1, "torch": "2.11.0", "torch_cuda": "13.0",
                       "device_name": "NVIDIA H100 80GB HBM3", "card": "H100 SXM", "peak_tflops": 989.4,
                       "peak_kind": "bf16"} if cuda is True else cuda)
        self._driver = {"version": "580.65.06", "cuda": "13.0"} if driver is None else driver
        self._dali = {"package": "nvidia-dali-cuda130", "version": "2.4.0", "cuda_major": 13} if dali is None else dali
        self._cc, self._pytest = cc, pytest_
        self.asked = []

    def cuda(self):
        self.asked.append("cuda")
        return self._cuda

    def driver(self):
        return self._driver

    def dali(self):
        return self._dali

    def c_compiler(self):
        return self._cc

    def has_pytest(self):
        return self._pytest


def _by_name(checks):
    return {c["name"]: c for c in checks}


def test_preflight_says_each_problem_in_one_line():
    ok, card = gpu_check.preflight(FakeProbes(), dry=False, compile_on=True)
    assert all(c["ok"] for c in ok) and card["card"] == "H100 SXM"
    assert [c["name"] for c in ok] == ["CUDA device", "driver and DALI", "C compiler", "pytest"]

    old = _by_name(gpu_check.preflight(FakeProbes(driver={"version": "550.54.15", "cuda": "12.4"}),
                                       dry=False, compile_on=False)[0])["driver and DALI"]
    assert not old["ok"] and set(old["blocks"]) == set(gpu_check.LOADER_STAGES)
    assert "supports CUDA 12.4" in old["line"] and "nvidia-dali-cuda130" in old["line"]
    assert "\n" not in old["line"]
    # without nvidia-smi's CUDA column the driver's version decides (DALI's table)
    older = _by_name(gpu_check.preflight(FakeProbes(driver={"version": "535.104.05"}), dry=False,
                                         compile_on=False)[0])["driver and DALI"]
    assert not older["ok"] and "older than 580.0" in older["line"]
    fine = _by_name(gpu_check.preflight(FakeProbes(driver={"version": "535.104.05", "cuda": "12.2"},
                                                   dali={"package": "nvidia-dali-cuda120", "version": "1.52",
                                                         "cuda_major": 12}), dry=False, compile_on=False)[0])
    assert fine["driver and DALI"]["ok"]
    nodali = _by_name(gpu_check.preflight(FakeProbes(dali={"error": "nvidia.dali is not importable"}), dry=False,
                                          compile_on=False)[0])["driver and DALI"]
    assert not nodali["ok"] and "not importable" in nodali["line"]

    nocc = _by_name(gpu_check.preflight(FakeProbes(cc=None), dry=False, compile_on=True)[0])["C compiler"]
    assert not nocc["ok"] and nocc["blocks"] == ["train_bench", "train_run"] and "gcc" in nocc["line"]
    assert "C compiler" not in _by_name(gpu_check.preflight(FakeProbes(cc=None), dry=False, compile_on=False)[0])
    nopytest = _by_name(gpu_check.preflight(FakeProbes(pytest_=False), dry=False, compile_on=False)[0])["pytest"]
    assert not nopytest["ok"] and nopytest["blocks"] == ["gpu_tests"]

    probes = FakeProbes(cuda={"available": False, "torch": "2.13.0", "torch_cuda": None})
    checks, _ = gpu_check.preflight(probes, dry=False, compile_on=False)
    assert len(checks) == 1 and checks[0]["fatal"] and checks[0]["line"].startswith("no CUDA device")
    dry_probes = FakeProbes(cuda={"available": False})
    dry, _ = gpu_check.preflight(dry_probes, dry=True, compile_on=False)
    assert all(c["ok"] for c in dry) and dry_probes.asked == []  # the dry run never asks for a GPU


def test_no_cuda_device_exits_2_at_once(tmp_path, capsys):
    probes = FakeProbes(cuda={"available": False, "torch": "2.13.0", "torch_cuda": None})
    t0 = time.monotonic()
    assert gpu_check.main(["--work", str(tmp_path / "work")], probes=probes) == 2
    assert time.monotonic() - t0 < 30
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["preflight CUDA device: FAIL - no CUDA device: torch 2.13.0 (CUDA build None) sees no GPU; "
                   "run on a GPU host, or use --cpu-dry-run"]
    assert not any((tmp_path / "work").iterdir())  # no stage ran, no report


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the real probe on a machine without a GPU")
def test_the_real_probe_finds_no_gpu_here(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--work", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stdout.startswith("preflight CUDA device: FAIL - no CUDA device") and len(res.stdout.splitlines()) == 1


# ---- the stages, with fake commands ----------------------------------------------------------------------
FAKES = {
    "tools/make_synthetic.py": """
        import sys, pathlib
        out = pathlib.Path(sys.argv[sys.argv.index("--out") + 1]); out.mkdir(parents=True, exist_ok=True)
    """,
    "tools/build_lmdb.py": """
        import sys, pathlib
        out = pathlib.Path(sys.argv[sys.argv.index("--out") + 1]) / "VID"; out.mkdir(parents=True, exist_ok=True)
        (out / "index.msgpack").write_bytes(b"fake")
    """,
    # the loader: progress lines, then a hang (the stage is stopped at its budget); --host-only answers
    "tools/bench_loader.py": """
        import json, sys, time
        if "--host-only" in sys.argv:
            out = sys.argv[sys.argv.index("--json") + 1]
            host = {"host_us_per_pair": 150.0, "one_core_pairs_per_s": 6666.7, "two_cores_pairs_per_s": 13333.3}
            open(out, "w").write(json.dumps({"host_only": host}))
            sys.exit(0)
        for n in (1, 2):
            print("bench_loader progress " + json.dumps({"batches": 10 * n, "pairs": 1280 * n, "seconds": n,
                                                         "pairs_per_s": 1280.0}), file=sys.stderr, flush=True)
        time.sleep(600)
    """,
    # training benchmark: the frozen phase's figures, then a crash
    "tools/bench_train.py": """
        import json, sys
        phase = {"real_loader": {"step_ms": 50.0, "mfu": 0.12, "steps": 30}, "synthetic_in_memory": {"step_ms": 49.0},
                 "data_wait_frac": 0.001, "loader_gpu_frac": 0.019}
        print("bench_train phase frozen " + json.dumps(phase), file=sys.stderr, flush=True)
        sys.exit("CUDA error: an illegal memory access was encountered")
    """,
    "train/run.py": """
        import json, sys, pathlib
        out = pathlib.Path(sys.argv[sys.argv.index("--out") + 1]); out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").write_text("\\n".join(json.dumps({"total_loss": v}) for v in (3.0, 2.0)) + "\\n")
        (out / "summary.json").write_text(json.dumps({"global_step": 20, "skipped_steps": 0}))
    """,
    "tools/gpu_check.py": """
        import sys, pathlib
        out = pathlib.Path(sys.argv[sys.argv.index("--profile-loader") + 4]); out.write_text("profile")
    """,
    "tests/test_train_gpu.py": """
        import time, pytest
        CUDA = pytest.mark.skipif(False, reason="needs a CUDA device")
        @CUDA
        def test_passes():  # writes beside its working directory, as pytest-benchmark's .benchmarks/ does
            import pathlib; pathlib.Path(".benchmarks").mkdir(exist_ok=True)
        @CUDA
        def test_overruns(): time.sleep(60)
        @CUDA
        def test_fails(): assert 1 == 2
        def test_cpu_twin(): pass   # not a CUDA test: left to the CPU suite
    """,
    "tests/test_loader_gpu.py": """
        import pytest
        @pytest.mark.skipif(False, reason="needs a CUDA device")
        def test_loader_on_gpu(): pass
        @pytest.mark.skipif(True, reason="needs a CUDA device")
        def test_skipped_on_this_host(): pass
    """,
}


@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    for rel, code in FAKES.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(code))
    shutil.copy(ROOT / "tests" / "gpu_budget_plugin.py", repo / "tests" / "gpu_budget_plugin.py")
    monkeypatch.setattr(gpu_check, "REPO", repo)
    budgets = {"shards_raw": 10, "shards_lmdb": 10, "gpu_tests": 30, "loader": 6, "train_bench": 10,
               "train_run": 10, "loader_host": 10, "profile_loader": 10}
    monkeypatch.setitem(gpu_check.PLANS, "gpu", {**gpu_check.PLANS["gpu"], "budgets": budgets})
    monkeypatch.setitem(gpu_check.PER_TEST_TIMEOUT_S, "gpu", 2)
    return repo


def test_every_stage_gives_a_figure_or_a_reason_within_its_budget(fake_repo, capsys):
    before = set(fake_repo.iterdir())
    t0 = time.monotonic()
    assert gpu_check.main([], probes=FakeProbes()) == 1
    work = fake_repo / "runs" / "gpu_check"  # the default: the report and logs under runs/, never the root
    assert set(fake_repo.iterdir()) - before == {fake_repo / "runs"}
    elapsed = time.monotonic() - t0
    budgets = gpu_check.PLANS["gpu"]["budgets"]
    assert elapsed < sum(budgets.values())
    report = json.loads((work / "gpu_report.json").read_text())
    stages = report["stages"]
    assert {k: v["status"] for k, v in stages.items()} == {
        "shards_raw": "ok", "shards_lmdb": "ok", "shards": "ok", "gpu_tests": "failed", "loader": "timeout",
        "train_bench": "failed", "train_run": "ok", "loader_host": "ok", "profile_loader": "ok"}
    assert stages["loader"]["seconds"] < budgets["loader"] + 5  # stopped at its budget, with its children
    # the GPU tests: counted as they ran, the overrunning one stopped by its own limit
    counts = stages["gpu_tests"]["counts"]
    assert counts == {"passed": 2, "failed": 1, "skipped": 1, "error": 0, "timeout": 1, "collected": 5}
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["GPU tests"]["status"] == "FAIL" and "1 skipped" in rows["GPU tests"]["value"]
    # the loader was stopped: the rate its progress lines reached, judged, and the diagnosis ran
    assert rows["loader pairs/s"]["value"] == 1280.0 and rows["loader pairs/s"]["status"] == "MISS"
    assert "reached before the stage stopped" in rows["loader pairs/s"]["note"]
    assert "profile" in rows["loader pairs/s"]["note"]
    assert rows["loader host side alone"]["value"] == 150.0 and rows["loader host side alone"]["status"] == "PASS"
    # the training benchmark crashed after its frozen phase: those figures, and a reason for the rest
    assert rows["frozen ms/step"]["value"] == 50.0 and rows["frozen data wait"]["status"] == "PASS"
    assert rows["frozen MFU"]["status"] == "info"  # reported against the same peak, not judged
    assert rows["unfrozen MFU"]["status"] == "FAIL" and "train_bench failed" in rows["unfrozen MFU"]["note"]
    assert rows["training run across the unfreeze"]["status"] == "PASS"
    for row in report["rows"]:  # a figure, or a one-line reason
        assert row["value"] is not None or row["note"], row
        assert "\n" not in row["note"]
    assert Path(report["stages"]["loader"]["log"]).parent == work


def test_blocked_stages_are_skipped_with_the_preflight_line(fake_repo, tmp_path):
    work = tmp_path / "work"
    probes = FakeProbes(driver={"version": "550.54.15", "cuda": "12.4"}, pytest_=False)
    assert gpu_check.main(["--work", str(work)], probes=probes) == 1
    report = json.loads((work / "gpu_report.json").read_text())
    for stage in gpu_check.LOADER_STAGES:
        assert report["stages"][stage]["status"] == "skipped"
        assert report["stages"][stage]["detail"].startswith("preflight: ")
    rows = {r["name"]: r for r in report["rows"]}
    assert "supports CUDA 12.4" in rows["loader pairs/s"]["note"]
    assert "profile_loader" not in report["stages"]  # nothing to diagnose: the loader never ran


def test_built_shards_are_reused(fake_repo, tmp_path):
    work = tmp_path / "work"
    assert gpu_check.main(["--build-shards-only", "--work", str(work)]) == 0
    built = gpu_check.find_shards(work, "gpu")
    assert gpu_check.shards_ready(built)
    (fake_repo / "tools" / "build_lmdb.py").write_text("import sys; sys.exit('must not build again')")
    gpu_check.main(["--work", str(work)], probes=FakeProbes())
    report = json.loads((work / "gpu_report.json").read_text())
    assert report["stages"]["shards"] == {"status": "reused", "detail": str(built)}
    assert "shards_lmdb" not in report["stages"]


def test_failed_and_overrunning_stages_are_recorded_and_killed(tmp_path):
    stages = gpu_check.Stages(tmp_path, total_s=60)
    assert stages.run("fine", [sys.executable, "-c", "print('figures')"], 20).strip() == "figures"
    assert stages.run("broken", [sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"],
                      20) is None
    t0 = time.monotonic()
    child = tmp_path / "child.pid"
    # a stage that starts a child, prints, and hangs: both are killed at the budget, its output kept
    hang = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            f"open({str(child)!r}, 'w').write(str(p.pid)); print('so far', flush=True); time.sleep(60)")
    assert stages.run("hangs", [sys.executable, "-c", hang], 6) is None
    assert time.monotonic() - t0 < 30
    r = stages.results
    assert r["fine"]["status"] == "ok"
    assert r["broken"]["status"] == "failed" and "exit status 3" in r["broken"]["detail"]
    assert "boom" in r["broken"]["output_tail"]
    assert r["hangs"]["status"] == "timeout" and stages.stdout["hangs"] == "so far\n"
    pid = int(child.read_text())
    time.sleep(0.5)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    stages.deadline = time.monotonic() + 2  # the 5-minute budget is spent: later stages are skipped, not run
    assert stages.run("late", [sys.executable, "-c", "pass"], 20) is None and r["late"]["status"] == "skipped"


def test_a_test_stuck_in_c_code_ends_the_run_with_its_counts(tmp_path):
    """SIGALRM cannot interrupt a test whose signals are blocked (as in a C call that retries): the
    faulthandler backstop ends the process; the lines printed so far still count."""
    (tmp_path / "test_stuck.py").write_text(textwrap.dedent("""
        import signal, time
        def test_first(): pass
        def test_stuck():
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
            time.sleep(60)
        def test_never(): pass
    """))
    plugin = importlib.util.spec_from_file_location("gpu_budget_plugin", ROOT / "tests" / "gpu_budget_plugin.py")
    module = importlib.util.module_from_spec(plugin)
    plugin.loader.exec_module(module)
    env = {"PYTHONPATH": str(ROOT / "tests"), "PATH": "/usr/bin:/bin"}
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "gpu_budget_plugin",
                          "--per-test-timeout", "1", "--stuck-traceback", str(tmp_path / "stuck.txt"),
                          str(tmp_path / "test_stuck.py")], capture_output=True,
                         text=True, timeout=120, env=env, cwd=tmp_path)
    assert time.monotonic() - t0 < 1 + module.GRACE_S + 30
    assert res.returncode != 0
    counts = gpu_check.test_counts(res.stdout)
    assert counts["passed"] == 1 and counts["collected"] == 3 and counts["passed"] + counts["failed"] < 3
    assert "test_stuck" in (tmp_path / "stuck.txt").read_text()  # faulthandler's traceback: where it hung


def _bench(mfu, wait, xcorr_share):
    phase = {"real_loader": {"step_ms": 20.0, "mfu": mfu}, "synthetic_in_memory": {"step_ms": 19.8},
             "data_wait_frac": wait, "loader_gpu_frac": 0.005, "profile": "runs/p.txt",
             "xcorr_layout": {"share_of_step": xcorr_share, "round_trip_ms_per_step": 0.1, "calls_per_step": 6}}
    return {"phases": {"frozen": phase, "unfrozen": dict(phase)},
            "peak_memory": {"torch_peak_reserved_gib": 10.0, "device_used_peak_gib": 12.5, "outside_torch_gib": 2.5}}


def test_figures_are_judged_against_the_targets(tmp_path):
    stages = gpu_check.Stages(tmp_path, total_s=60)
    stages.record("shards", "given")
    for name in ("gpu_tests", "train_run", "loader", "train_bench"):
        stages.record(name, "ok")
    info = {"card": "H100 SXM", "device_name": "NVIDIA H100 80GB HBM3", "peak_tflops": 989.4, "peak_kind": "bf16"}
    run = {"global_step": 20, "losses": [3.0, 2.5]}
    loader = {"dali": {"pairs_per_s": 12000.0, "cpu_cores_busy": 1.5, "num_threads": 4, "threads_why": "GPU path",
                       "hw_decoder_load": 1.0, "hw_decoder_why": "hardware JPEG"}}
    tests = {"passed": 9, "collected": 9}
    rows = {r["name"]: r for r in gpu_check.build_rows(info, tests, loader, _bench(0.22, 0.01, 0.004),
                                                       run, stages, dry=False)}
    assert all(r["status"] in ("PASS", "info") for r in rows.values()), rows
    assert rows["loader JPEG hardware share"]["value"] == 1.0 and rows["unfrozen loader GPU share"]["value"] == 0.005
    missed = {r["name"]: r for r in gpu_check.build_rows(
        info, {"passed": 8, "failed": 1, "collected": 9}, {"dali": {"pairs_per_s": 9000.0, "cpu_cores_busy": 2.5,
                                                                     "num_threads": 16}},
        _bench(0.15, 0.05, 0.02), run, stages, dry=False)}
    for name in ("loader pairs/s", "loader CPU cores busy", "unfrozen MFU", "unfrozen data wait",
                 "frozen xcorr layout copies"):
        assert missed[name]["status"] == "MISS", name
    assert missed["frozen MFU"]["status"] == "info"  # 15% is reported, not judged, in the frozen phase
    assert missed["GPU tests"]["status"] == "FAIL"
    assert missed["unfrozen MFU"]["note"] == "profile: runs/p.txt"  # a missed target points at its profile
    skipped = {r["name"]: r for r in gpu_check.build_rows(info, {"passed": 8, "skipped": 1, "collected": 9}, loader,
                                                          _bench(0.22, 0.01, 0.004), run, stages, dry=False)}
    assert skipped["GPU tests"]["status"] == "FAIL" and skipped["GPU tests"]["note"] == "a skipped GPU test is not a pass"
    # a stage that never produced its figures: FAIL with the reason, not a crash; a dry run judges nothing
    stages.record("loader", "timeout", "stopped after its 35 s budget")
    failed = {r["name"]: r for r in gpu_check.build_rows(info, {}, None, None, None, stages, dry=False)}
    assert failed["loader pairs/s"]["status"] == failed["unfrozen MFU"]["status"] == "FAIL"
    assert failed["loader pairs/s"]["note"] == "stage loader timeout: stopped after its 35 s budget"
    dry = {r["name"]: r for r in gpu_check.build_rows(info, {"passed": 1, "collected": 1}, loader,
                                                      _bench(None, 0.3, 0.5), run, stages, dry=True)}
    assert dry["unfrozen MFU"]["status"] == dry["loader pairs/s"]["status"] == "n/a"
    assert "| unfrozen MFU | 22.00% | >= 20% | PASS |" in gpu_check.print_table(list(rows.values()), stages)
