"""tools/bench_loader.py and tools/show_pairs.py run end to end on small synthetic shards."""
import importlib.util
import json
import os
import time
from pathlib import Path

import cv2
import pytest

from mask_fixtures import build_mask_shards, mask_overrides
from sampling_fixtures import build_test_shards, overrides

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_test_shards(tmp_path_factory.mktemp("tools"))


class _Observed:
    """The real loader, with the time each batch left it and when it was closed noted."""

    def __init__(self, loader, log):
        self._loader, self._log = loader, log

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def __len__(self):
        return len(self._loader)

    def __iter__(self):
        for batch in self._loader:
            self._log.append((time.perf_counter(), len(batch["template"])))
            yield batch

    def close(self):
        self._log.append((time.perf_counter(), None))
        self._loader.close()


def _observed_data_loader(log):
    """torch's DataLoader, with the time each batch left it and when its iterator ended noted."""
    from torch.utils.data import DataLoader

    class Observed(DataLoader):
        def __iter__(self):
            try:
                for batch in super().__iter__():
                    log.append((time.perf_counter(), len(batch["template"])))
                    yield batch
            finally:
                log.append((time.perf_counter(), None))

    return Observed


def _window_bounds(log, warmup: int, batches: int):
    """(pairs, shortest, longest wall time) a window of `batches` batches after `warmup` can have,
    from the times the batches left the loader: it starts after batch warmup-1 left and before
    batch warmup did, and stops after its last batch left and before the iteration ended."""
    left = [t for t, n in log if n is not None]
    end = next(t for t, n in log if n is None)
    pairs = sum(n for _, n in log[warmup:warmup + batches] if n is not None)
    return pairs, left[warmup + batches - 1] - left[warmup], end - left[warmup - 1]


@pytest.mark.parametrize("native", [False, True], ids=["kernel", "native-ops"])
def test_bench_loader_writes_json(shards, tmp_path, native, capsys):
    out = tmp_path / "bench.json"
    # 32 batches of 8 span 4 DALI runs of 64 pairs: the measured window holds real work
    argv = ["--shards", str(shards), "--device", "cpu", "--batch-size", "8", "--batches", "32",
            "--warmup", "8", "--rounds", "1", "--min-seconds", "0", "--json", str(out),
            "--opts", *overrides(**{"DATASET.SEARCH.BLUR": 0.2, "DATASET.VIDEOS_PER_EPOCH": 400})]
    tool = load_tool("bench_loader")
    dali_log, ref_log = [], []
    real_build = tool.build_loader
    tool.build_loader = lambda *a, **kw: _Observed(real_build(*a, **kw), dali_log)  # the real loader, watched
    tool.DataLoader = _observed_data_loader(ref_log)
    t0 = time.perf_counter()
    tool.main(argv + (["--native-ops"] if native else []))
    total = time.perf_counter() - t0
    result = json.loads(out.read_text())
    assert result["dali"]["crop_kernel"] is (not native)
    assert result["dali"]["num_threads"] >= 2 and result["dali"]["skipped"] == 0
    assert result["dali"]["batches_per_dali_run"] == 8
    for side, log in (("dali", dali_log), ("reference", ref_log)):
        window = result[side]
        assert window["batches"] == 32  # --min-seconds 0: exactly --batches
        assert sum(n is not None for _, n in log) >= 8 + 32
        # the rate against the clock of this test: the pairs that left the loader in the window,
        # over a wall time between the shortest and the longest the window can have had
        pairs, shortest, longest = _window_bounds(log, 8, 32)
        assert pairs == 8 * 32
        assert shortest <= window["wall_s"] <= longest, (side, shortest, window["wall_s"], longest)
        assert pairs / longest <= window["pairs_per_s"] <= pairs / shortest
        assert 0 < window["cpu_cores_busy"] * window["wall_s"] <= total * os.cpu_count()
    assert result["dali"]["wall_s"] + result["reference"]["wall_s"] <= total
    # the speedup compares what each loader delivered per second in its window
    dali, ref = result["dali"], result["reference"]
    assert result["speedup"] == pytest.approx(dali["pairs_per_s"] / ref["pairs_per_s"])
    assert result["gpu"] is None and result["search_blur"] == 0.2
    assert "speedup (median pairs/s)" in capsys.readouterr().out


def test_bench_loader_reports_the_median_round():
    """--rounds R: the reported window is the round with the median pairs/s (robust to one round
    disturbed by other load), with every round's figure alongside."""
    runs = [{"pairs_per_s": v, "round": i} for i, v in enumerate([900.0, 120.0, 1000.0, 980.0, 950.0])]
    median = load_tool("bench_loader")._median_run(runs)
    assert median["round"] == 4 and median["pairs_per_s"] == 950.0
    assert median["rounds_pairs_per_s"] == [900.0, 120.0, 1000.0, 980.0, 950.0]


def test_bench_loader_cold_and_warm(shards, tmp_path, capsys):
    """--cold: the shard files are evicted before the first window and read back in before
    the warm one; both figures land in the JSON (the DALI side alone here)."""
    out = tmp_path / "bench.json"
    argv = ["--shards", str(shards), "--device", "cpu", "--batch-size", "8", "--batches", "16",
            "--warmup", "2", "--rounds", "2", "--min-seconds", "0", "--cold", "--skip-reference",
            "--read-threads", "2", "--read-ahead", "3", "--json", str(out),
            "--opts", *overrides(**{"DATASET.VIDEOS_PER_EPOCH": 400})]
    load_tool("bench_loader").main(argv)
    result = json.loads(out.read_text())
    shard_bytes = sum(p.stat().st_size for p in Path(shards).rglob("*") if p.is_file())
    assert result["cold"] and result["dali"]["evicted_bytes"] == shard_bytes
    assert result["dali"]["read_threads"] == 2 and result["dali"]["read_ahead"] == 3
    for window in (result["dali"], result["dali_cold"]):
        assert window["batches"] >= 16 and window["pairs_per_s"] > 0
    assert len(result["dali_cold"]["rounds_pairs_per_s"]) == 2 and result["cold_over_warm"] > 0
    assert "reference" not in result
    assert "cold / warm" in capsys.readouterr().out


def test_show_pairs_draws_a_grid(shards, tmp_path):
    out = tmp_path / "pairs.png"
    load_tool("show_pairs").main(["--shards", str(shards), "--out", str(out), "--n", "4",
                                  "--opts", *overrides()])
    image = cv2.imread(str(out))
    assert image is not None
    # two columns of (template | search) rows, two rows: at least 2 x (127 + 255) wide
    assert image.shape[1] >= 2 * (127 + 255) and image.shape[0] >= 2 * 255
    assert image.std() > 10   # real pixels, not an empty canvas


def test_bench_loader_with_a_siammask_config(tmp_path, capsys):
    """A SiamMask config runs as any config (the reference's items carry the masks too), and
    --mask-cost runs it against itself as SiamRPN in alternating windows: the cost is the median
    of the per-round ratios."""
    shards = build_mask_shards(tmp_path)
    out = tmp_path / "bench.json"
    opts = mask_overrides(**{"DATASET.VIDEOS_PER_EPOCH": 160})
    argv = ["--shards", str(shards), "--device", "cpu", "--batch-size", "8", "--batches", "8",
            "--warmup", "1", "--min-seconds", "0", "--json", str(out)]
    load_tool("bench_loader").main(argv + ["--rounds", "1", "--workers", "1", "--opts", *opts])
    result = json.loads(out.read_text())
    assert result["dali"]["batches"] >= 8 and result["reference"]["batches"] >= 8
    load_tool("bench_loader").main(argv + ["--rounds", "2", "--mask-cost", "--opts", *opts])
    result = json.loads(out.read_text())
    ratios = result["mask_cost_rounds"]
    assert len(ratios["cpu_ms_per_pair"]) == 2 and "reference" not in result
    for key in ("cpu_ms_per_pair", "pairs_per_s"):
        assert result["mask_cost"][key] in ratios[key]
    assert len(result["siammask"]["rounds_pairs_per_s"]) == 2
    assert result["siammask"]["batches"] >= 8 and result["siamrpn"]["batches"] >= 8
    assert "SiamMask / SiamRPN" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="SiamMask config"):
        load_tool("bench_loader").main(argv + ["--mask-cost", "--opts", *opts, "MASK.MASK=False"])


def test_bench_mask_decode_writes_json(tmp_path, capsys):
    out = tmp_path / "decode.json"
    load_tool("bench_mask_decode").main(["--masks", "64", "--rounds", "2", "--repeat", "1",
                                         "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["masks"] == 64 and 100 < result["png_bytes_mean"] < 2000
    for way in ("cv2", "dali", "inflate"):
        assert len(result["rounds"][way]) == 2 and result["cpu_us_per_mask"][way] > 0
    assert result["ratio_to_cv2"]["cv2"] == 1.0
    assert "median CPU us per mask" in capsys.readouterr().out
