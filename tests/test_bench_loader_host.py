"""tools/bench_loader.py --host-only on tiny shards: its figures against measurements taken
outside the tool (the pairs and JPEG bytes of the same batches prepared here, the process's CPU
time from getrusage around the call).  No timing is asserted."""
import json
import resource
from pathlib import Path

import pytest

from pipeline.loader import batches_per_run, build_loader
from sampling_fixtures import build_test_shards, overrides
from test_loader_tools import load_tool
from train.config import load_config

BATCH = 8
CFG = Path(__file__).resolve().parents[1] / "configs" / "siamrpn_r50_l234_dwxcorr_8gpu.yaml"  # the tool's default
OPTS = overrides(**{"DATASET.VIDEOS_PER_EPOCH": 400})
RUN = batches_per_run(BATCH, on_gpu=True, hw_decoder_load=1.0)   # the host-only runs (16 batches)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_test_shards(tmp_path_factory.mktemp("host_only"))


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _jpeg_bytes(shards, epoch: int, first: int, count: int) -> int:
    """Bytes of the template and search crops of batches [first, first + count) of `epoch`,
    prepared here by a CPU loader's own preparation (one thread, no read-ahead)."""
    loader = build_loader(load_config(CFG, OPTS), shards=shards, batch_size=BATCH, device="cpu",
                          crop_kernel=False)
    total = 0
    for b in range(first, first + count):
        prepared = loader.preparer.prepare(epoch, b)
        total += sum(map(len, prepared.template_jpegs)) + sum(map(len, prepared.search_jpegs))
    loader.close()
    return total


def test_host_only_figures_match_outside_measurements(shards, tmp_path, capsys):
    out = tmp_path / "host.json"
    argv = ["--host-only", "--shards", str(shards), "--batch-size", str(BATCH), "--batches", "6",
            "--warmup", "2", "--rounds", "1", "--min-seconds", "0", "--read-threads", "2",
            "--json", str(out), "--opts", *OPTS]
    before = _cpu_seconds()
    load_tool("bench_loader").main(argv)
    outside_cpu = _cpu_seconds() - before
    result = json.loads(out.read_text())
    window = result["host_only"]
    assert result["mode"] == "host-only" and window["read_threads"] == 2
    # runs of RUN batches, as the GPU loader groups them: the warm-up is one run and the window
    # stops at the end of the run that reaches --batches
    assert window["batches_per_run"] == RUN and window["first_batch"] == RUN
    assert window["batches"] == RUN and window["pairs"] == RUN * BATCH
    assert window["jpeg_bytes"] == _jpeg_bytes(shards, window["epoch"], RUN, RUN)
    # the tool's CPU seconds are part of what the process spent around the call (getrusage)
    assert 0 < window["cpu_s"] <= outside_cpu + 1e-6
    threads = window["thread_cpu_s"]
    assert set(threads) == {"read_ahead", "consumer", "readers", "dali_and_other"}
    measured = threads["read_ahead"] + threads["consumer"] + threads["readers"]  # the threads' own CPU clocks
    assert 0 < measured <= window["cpu_s"] + 1e-3
    assert threads["dali_and_other"] == pytest.approx(max(0.0, window["cpu_s"] - measured))
    # the derived figures follow from the measured ones
    assert window["host_us_per_pair"] == pytest.approx(1e6 * window["cpu_s"] / window["pairs"])
    assert window["one_core_pairs_per_s"] == pytest.approx(1e6 / window["host_us_per_pair"])
    assert window["one_core_pairs_per_s"] <= window["two_cores_pairs_per_s"] <= 2 * window["one_core_pairs_per_s"] + 1e-6
    assert window["pairs_per_s"] == pytest.approx(window["pairs"] / window["wall_s"])
    assert result["target"]["host_us_per_pair"] == 200
    assert "host CPU us/pair" in capsys.readouterr().out


def test_host_only_cold_evicts_the_shards_first(shards, tmp_path):
    out = tmp_path / "host.json"
    load_tool("bench_loader").main(["--host-only", "--cold", "--shards", str(shards), "--batch-size", str(BATCH),
                                    "--batches", "3", "--warmup", "1", "--rounds", "1", "--min-seconds", "0",
                                    "--json", str(out), "--opts", *OPTS])
    result = json.loads(out.read_text())
    shard_bytes = sum(p.stat().st_size for p in Path(shards).rglob("*") if p.is_file())
    assert result["host_only"]["evicted_bytes"] == shard_bytes
    cold, warm = result["host_only_cold"], result["host_only"]
    assert cold["pairs"] == warm["pairs"] == RUN * BATCH and cold["epoch"] != warm["epoch"]
