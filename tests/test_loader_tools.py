"""tools/bench_loader.py and tools/show_pairs.py run end to end on small synthetic shards."""
import importlib.util
import json
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


@pytest.mark.parametrize("native", [False, True], ids=["kernel", "native-ops"])
def test_bench_loader_writes_json(shards, tmp_path, native, capsys):
    out = tmp_path / "bench.json"
    # 32 batches of 8 span 4 DALI runs of 64 pairs: the measured window holds real work
    argv = ["--shards", str(shards), "--device", "cpu", "--batch-size", "8", "--batches", "32",
            "--warmup", "8", "--rounds", "1", "--min-seconds", "0", "--json", str(out),
            "--opts", *overrides(**{"DATASET.SEARCH.BLUR": 0.2, "DATASET.VIDEOS_PER_EPOCH": 400})]
    load_tool("bench_loader").main(argv + (["--native-ops"] if native else []))
    result = json.loads(out.read_text())
    assert result["dali"]["crop_kernel"] is (not native)
    assert result["dali"]["num_threads"] >= 2 and result["dali"]["skipped"] == 0
    assert result["dali"]["batches_per_dali_run"] == 8
    for side in ("dali", "reference"):
        window = result[side]
        assert window["batches"] >= 32 and window["cpu_cores_busy"] > 0  # --batches 32 at least
        # the rate is the window's pairs (batches of 8) over its own wall time
        assert window["pairs_per_s"] == pytest.approx(8 * window["batches"] / window["wall_s"])
    # the speedup compares what each loader delivered per second in its window
    dali, ref = result["dali"], result["reference"]
    assert result["speedup"] == pytest.approx((dali["batches"] / dali["wall_s"]) / (ref["batches"] / ref["wall_s"]))
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
