"""The GPU graph and loader against the CPU graph and loader, per image; buffer ownership;
determinism.

Every test runs CPU-vs-CPU in the normal suite (the fused CPU kernel against DALI's native
operators, which are the GPU graph's operators): the comparison logic is exercised on every run,
so a first GPU run fails on the GPU, not on a test bug.  The CUDA variants are skipped where
there is no CUDA device.
"""
import cv2
import numpy as np
import pytest
import torch
from nvidia.dali import fn, pipeline_def

from mask_fixtures import check_mask_labels, mask_cfg
from pipeline import build_loader
from pipeline.batch import LABEL_MASK, LABEL_MASK_WEIGHT
from pipeline.dali_graph import DECODE_FIELDS, FIELDS, MASK_FIELDS, IS_SEARCH, PairGraph, _pair_graph, graph_fields
from test_dali_graph import BATCH as GRAPH_BATCH, make_plans, render, textured_crop
from test_loader import BATCH, batches, make_cfg, shards  # noqa: F401  (module fixture)

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]
KINDS = ["plain", "flip", "gray", "blur"]

# Per image: (mean, 99.9th percentile, max) of |a - b| in grey levels.
# CPU kernel vs CPU native operators: the same libjpeg-turbo decode; gray is rounded before the
# crop in the kernel and after it in DALI's operators (measured: at most one level anywhere).
SAME_DECODER = (0.25, 1.0, 1.0 + 1e-3)
# GPU native vs CPU native on crops whose chroma is not subsampled (or with nvJPEG's fancy
# upsampling): nvJPEG's IDCT and the GPU's rounding differ from libjpeg-turbo's by a level or two.
OTHER_DECODER = (0.5, 2.5, 6.0)
# Loader output with the production decoders (nvJPEG's default chroma upsampling differs from
# libjpeg-turbo's at colour edges): a broken image (window, flip, colour, channel order) is
# tens of grey levels off on average; decoder differences are not.
PRODUCTION = (1.5, 24.0, 255.0)


def image_stats(a, b) -> np.ndarray:
    """(N, 3) per image: mean, 99.9th percentile and max of |a - b| (tensors or arrays)."""
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64)).reshape(len(a), -1)
    return np.stack([diff.mean(1), np.percentile(diff, 99.9, axis=1), diff.max(1)], axis=1)


def assert_images_close(a, b, bounds, what: str) -> None:
    stats = image_stats(a, b)
    worst = stats.max(axis=0)
    for (name, bound), value in zip(zip(("mean", "p99.9", "max"), bounds), worst):
        image = int(stats[:, ("mean", "p99.9", "max").index(name)].argmax())
        assert value <= bound, f"{what}: image {image} has {name} |diff| {value:.3f} > {bound}"


def assert_labels_equal(a: dict, b: dict) -> None:
    """Labels are drawn from host keys, so they agree across devices: label_cls,
    label_loc_weight, bbox and neg exactly; label_loc to float32's last bits (log on the GPU
    and on the CPU may round differently)."""
    for key in ("label_cls", "label_loc_weight", "bbox", "neg"):
        assert torch.equal(a[key].cpu(), b[key].cpu()), key
    torch.testing.assert_close(a["label_loc"].cpu(), b["label_loc"].cpu(), rtol=1e-6, atol=1e-6)


def reencode(jpeg: bytes, sampling) -> bytes:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92,
                                            cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling])
    assert ok
    return data.tobytes()


# The graph variants compared with the CPU native-operator graph: (device, graph options,
# JPEG chroma sampling, tolerance).
VARIANTS = {
    "cpu-kernel": ("cpu", {"kernel": True, "roi_decode": True}, None, SAME_DECODER),
    "gpu-444": ("gpu", {"roi_decode": False}, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444, OTHER_DECODER),
    "gpu-444-roi": ("gpu", {"roi_decode": True}, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
                    OTHER_DECODER),
    "gpu-420-fancy": ("gpu", {"roi_decode": False, "fancy_upsampling": True},
                      cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, OTHER_DECODER),
}


def _variant_params():
    return [pytest.param(name, marks=() if name.startswith("cpu") else needs_cuda)
            for name in VARIANTS]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", _variant_params())
def test_graph_matches_the_cpu_native_graph_per_image(variant, kind):
    device, options, sampling, bounds = VARIANTS[variant]
    jpegs = [textured_crop(s) for s in range(GRAPH_BATCH)]
    if sampling is not None:
        jpegs = [reencode(j, sampling) for j in jpegs]
    plans = make_plans(seed=KINDS.index(kind) + 20, n=GRAPH_BATCH,
                       blur=1.0 if kind == "blur" else 0.0, flip=0.5 if kind == "flip" else 0.0,
                       gray=kind == "gray")
    if kind == "flip":
        assert any(p.search.flip for p in plans) and not all(p.search.flip for p in plans)
    reference = PairGraph(GRAPH_BATCH, device="cpu", kernel=False, roi_decode=False)
    if device == "gpu":
        options = dict(options, device_id=torch.cuda.current_device())
    graph = PairGraph(GRAPH_BATCH, device=device, **options)
    ref_z, ref_x = render(reference, plans, jpegs, jpegs[::-1])
    z, x = render(graph, plans, jpegs, jpegs[::-1])
    assert_images_close(z, ref_z, bounds, f"{variant} {kind} template")
    assert_images_close(x, ref_x, bounds, f"{variant} {kind} search")


def test_image_comparison_catches_a_broken_image():
    """The per-image check fails for one wrong image in a batch that a batch mean would pass."""
    jpegs = [textured_crop(s) for s in range(GRAPH_BATCH)]
    plans = make_plans(seed=1, n=GRAPH_BATCH)
    _, x = render(PairGraph(GRAPH_BATCH, device="cpu", kernel=True), plans, jpegs, jpegs)
    broken = x.copy()
    broken[2, :, 100:140] = broken[2, ::-1, 100:140]        # channel order swapped in a band
    assert np.abs(broken - x).mean() < 1.5                   # the old batch-mean check passes
    with pytest.raises(AssertionError, match="image 2"):
        assert_images_close(broken, x, PRODUCTION, "broken")


@pytest.mark.parametrize("mask", [False, True], ids=["siamrpn", "siammask"])
@pytest.mark.parametrize("roi", [True, False], ids=["roi", "full"])
def test_the_gpu_graph_definition_is_valid(roi, mask):
    """DALI checks every operator's arguments when the graph is defined, without a GPU: the
    GPU-only branches (mixed decoder options, native operators, the mask's warp) are at least
    well-formed."""
    fields = graph_fields(roi, True, True, True, False, mask)
    assert set(fields["inputs"]) <= {*DECODE_FIELDS, *FIELDS, *MASK_FIELDS, IS_SEARCH}
    assert ("mask_matrix" in fields["inputs"]) == mask
    # constructing the pipeline defines the graph (operator schemas checked); nothing is built
    pipe = _pair_graph(fields, 127, 255, "gpu", roi, True, True, True, False,
                       {"hw_decoder_load": 0.65, "fancy_upsampling": False}, batch_size=4,
                       num_threads=2, device_id=0)
    assert pipe.device_id == 0

    @pipeline_def
    def misspelt():   # the same mechanism rejects an argument the mixed decoder does not have
        return fn.decoders.image(fn.external_source(name="jpeg"), device="mixed", hw_decoder=0.6)

    with pytest.raises(KeyError, match="hw_decoder"):
        misspelt(batch_size=4, num_threads=1, device_id=0)


@pytest.mark.parametrize("device", DEVICES)
def test_loader_matches_the_cpu_native_loader(shards, device):  # noqa: F811
    """Same seed: the same plans and label keys, so labels agree exactly (to float32's last
    bits for label_loc across devices) and images per image within the decoders' differences."""
    cfg = make_cfg(**{"DATASET.SEARCH.BLUR": 0.5, "DATASET.GRAY": 0.3,
                      "DATASET.SEARCH.FLIP": 0.5, "DATASET.VIDEOS_PER_EPOCH": 32})
    reference = build_loader(cfg, shards=shards, batch_size=BATCH, device="cpu", seed=11,
                             crop_kernel=False, roi_decode=False)
    reference.run_batches = 1   # the GPU loader's shape: the GPU graph, one batch a DALI run
    other = build_loader(cfg, shards=shards, batch_size=BATCH, device=device, seed=11)
    bounds = SAME_DECODER if device == "cpu" else PRODUCTION
    assert len(reference) == len(other)
    for a, b in zip(reference, other):
        assert b["search"].device.type == device and b["label_cls"].device.type == device
        assert_labels_equal(a, b)
        for key in ("template", "search"):
            assert_images_close(b[key], a[key], bounds, f"{device} loader {key}")


@pytest.mark.parametrize("device", DEVICES)
def test_held_batches_stay_unchanged_while_later_ones_render(shards, device):  # noqa: F811
    cfg = make_cfg(**{"DATASET.VIDEOS_PER_EPOCH": 64})
    loader = build_loader(cfg, shards=shards, batch_size=BATCH, device=device, seed=6)
    held, copies = [], []
    for b in loader:   # 16 batches: several runs rendered after the first ones were handed out
        held.append(b)
        copies.append({k: v.clone() for k, v in b.items()})
    for b, c in zip(held, copies):
        for key in b:
            assert torch.equal(b[key], c[key]), key
    assert not torch.equal(held[0]["search"], held[-1]["search"])


@pytest.mark.parametrize("device", DEVICES)
def test_two_loaders_with_one_seed_give_identical_batches(shards, device):  # noqa: F811
    cfg = make_cfg(**{"DATASET.SEARCH.BLUR": 0.5, "DATASET.GRAY": 0.3})
    one = batches(build_loader(cfg, shards=shards, batch_size=BATCH, device=device, seed=5))
    two = batches(build_loader(cfg, shards=shards, batch_size=BATCH, device=device, seed=5,
                               read_threads=1, read_ahead=1))
    assert len(one) == len(two) > 0
    for a, b in zip(one, two):
        for key in a:
            assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("device", DEVICES)
def test_mask_loader_matches_the_authors_and_the_cpu_native_loader(mask_shards, device):
    """SiamMask batches on `device` (the GPU: DALI's native operators, the mask's warp_affine
    on the GPU): every search mask as the authors' for its plan, the mask weights and labels
    exactly those of the CPU native loader, the images within the decoders' differences."""
    cfg = mask_cfg(**{"DATASET.VIDEOS_PER_EPOCH": 16})
    reference = build_loader(cfg, shards=mask_shards, batch_size=BATCH, device="cpu", seed=12,
                             crop_kernel=False, roi_decode=False)
    reference.run_batches = 1
    other = build_loader(cfg, shards=mask_shards, batch_size=BATCH, device=device, seed=12)
    bounds = SAME_DECODER if device == "cpu" else PRODUCTION
    masks = 0
    for b, (a, o) in enumerate(zip(reference, other)):
        assert o[LABEL_MASK].device.type == device and o[LABEL_MASK_WEIGHT].device.type == device
        masks += check_mask_labels(other, 0, b * BATCH, o)["mask"]
        assert_labels_equal(a, o)
        assert torch.equal(a[LABEL_MASK_WEIGHT], o[LABEL_MASK_WEIGHT].cpu())
        for key in ("template", "search"):
            assert_images_close(o[key], a[key], bounds, f"{device} mask loader {key}")
    assert masks > 0 and other.skipped == 0


@needs_cuda
def test_pinned_cpu_batches(shards):  # noqa: F811
    cfg = make_cfg()
    plain = next(iter(build_loader(cfg, shards=shards, batch_size=BATCH, device="cpu", seed=1)))
    pinned = next(iter(build_loader(cfg, shards=shards, batch_size=BATCH, device="cpu", seed=1,
                                    pin_memory=True)))
    for key, value in pinned.items():
        assert value.is_pinned(), key
        assert torch.equal(value, plain[key]), key


def test_hardware_jpeg_share_per_card():
    """Cards with hardware JPEG engines decode everything there; others keep DALI's default (the
    option has no effect without the engine); the config's share wins; the reason is said."""
    from pipeline.devices import DALI_HW_DECODER_LOAD, jpeg_hardware_share

    for name in ("NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA A100-SXM4-40GB", "NVIDIA GH200 480GB",
                 "NVIDIA B200", "NVIDIA A30"):
        share, why = jpeg_hardware_share(name, -1.0)
        assert share == 1.0 and "hardware JPEG" in why, name
    for name in ("NVIDIA GeForce RTX 4090", "NVIDIA L40S", "Tesla V100-SXM2-16GB", "NVIDIA H20X"):
        share, why = jpeg_hardware_share(name, -1.0)
        assert share == DALI_HW_DECODER_LOAD and "no hardware JPEG decoder" in why, name
    assert jpeg_hardware_share("NVIDIA H100 80GB HBM3", 0.3) == (0.3, "TRAIN.LOADER_HW_DECODER_LOAD=0.3 (config)")
    with pytest.raises(ValueError, match="must lie in"):
        jpeg_hardware_share("NVIDIA H100", 1.5)


def test_batches_per_dali_run():
    """Runs of >= 64 pairs on the CPU and >= 128 on a GPU whose hardware decoder takes every JPEG
    or none; one batch where it takes a share (a sample's place in a run would decide its decoder)."""
    from pipeline.loader import batches_per_run

    assert [batches_per_run(b, on_gpu=False) for b in (4, 28, 64, 128)] == [16, 3, 1, 1]
    assert [batches_per_run(b, True, 1.0) for b in (4, 28, 64, 128, 200)] == [32, 5, 2, 1, 1]
    assert batches_per_run(28, True, 0.0) == 5
    assert batches_per_run(28, True, 0.65) == batches_per_run(28, True, None) == 1


@pytest.mark.parametrize("device", DEVICES)
def test_runs_of_several_batches_give_the_batches_of_single_runs(shards, device):  # noqa: F811
    """Batches rendered in runs of several (the GPU loader's where its hardware decoder takes
    every JPEG or none) equal those of one batch a run, and a resumed iteration, whose runs start
    mid-way through the uninterrupted one's, gives them exactly too: a sample's blur kernel is
    zero-padded to its run's largest (more taps, the same sums)."""
    cfg = make_cfg(**{"DATASET.VIDEOS_PER_EPOCH": 64, "DATASET.SEARCH.BLUR": 0.5,
                      "DATASET.TEMPLATE.BLUR": 0.3, "TRAIN.LOADER_HW_DECODER_LOAD": 1.0})
    options = dict(crop_kernel=False, roi_decode=False) if device == "cpu" else {}  # the GPU graph

    def loader(**state):
        made = build_loader(cfg, shards=shards, batch_size=BATCH, device=device, seed=8, **options)
        made.load_state_dict({**made.state_dict(), **state})
        return made

    grouped = loader()
    assert grouped.run_batches > 2
    expected = batches(grouped)
    single = loader()
    single.run_batches = 1
    for other, first in ((batches(single), 0), (batches(loader(next_batch=3)), 3)):
        assert len(other) == len(expected) - first
        for a, b in zip(expected[first:], other):
            for key in a:
                assert torch.equal(a[key], b[key]), key


def test_dali_threads_capped_on_the_gpu_path(monkeypatch):
    from pipeline import devices

    monkeypatch.setattr(devices, "usable_cores", lambda: 16)   # a 16-core GPU host
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert devices.dali_threads(0, on_gpu=True)[0] == devices.GPU_DALI_THREADS == 4
    assert devices.dali_threads(0, on_gpu=False)[0] == 17   # the CPU path keeps its measured best
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")               # 8 processes: 2 cores each
    assert devices.dali_threads(0, on_gpu=True)[0] == 2
    assert devices.dali_threads(6, on_gpu=True) == (6, "6 DALI threads (TRAIN.LOADER_DALI_THREADS or the caller)")


def test_loader_says_how_it_chose_its_threads(shards):  # noqa: F811
    cfg = make_cfg(**{"TRAIN.LOADER_DALI_THREADS": 3})
    loader = build_loader(cfg, shards=shards, batch_size=BATCH, device="cpu", crop_kernel=False)
    assert loader.num_threads == 3 and "TRAIN.LOADER_DALI_THREADS" in loader.threads_why
    assert loader.hw_decoder_load is None and "libjpeg-turbo" in loader.hw_decoder_why
    assert loader.ready_event is None  # the device-timeline ready point exists on the GPU only


@needs_cuda
def test_gpu_loader_defaults_and_ready_event(shards):  # noqa: F811
    """On the GPU: the per-card JPEG share and the capped threads by default; after each batch a
    timing event on the consumer's stream, recorded where the stream waits for DALI's outputs."""
    from pipeline.devices import GPU_DALI_THREADS, jpeg_hardware_share

    loader = build_loader(make_cfg(), shards=shards, batch_size=BATCH, device="cuda", seed=3)
    name = torch.cuda.get_device_name(loader.device)
    assert (loader.hw_decoder_load, loader.hw_decoder_why) == jpeg_hardware_share(name, -1.0)
    assert loader.num_threads <= GPU_DALI_THREADS and "GPU path" in loader.threads_why
    stream = torch.cuda.current_stream(loader.device)
    seen = []
    for batch in batches(loader, loader.run_batches + 2):   # also the later batches of a run
        before = torch.cuda.Event(enable_timing=True)
        before.record(stream)
        ready = loader.ready_event
        assert ready is not None and all(ready is not earlier for earlier in seen)  # one per batch
        seen.append(ready)
        before.synchronize()
        assert ready.query() and ready.elapsed_time(before) >= 0  # recorded earlier on the same stream
        assert batch["search"].is_cuda
