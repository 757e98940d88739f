"""Checkpoint loading: round trips, PySOT wrappers/prefixes, partial files and clear errors."""
import logging
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from model import build_model
from model.checkpoint import load_model_checkpoint, load_pretrained
from train.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'


def demo_model(seed, overrides=()):
    torch.manual_seed(seed)
    return build_model(load_config(CONFIGS / 'demo_cpu.yaml', overrides=list(overrides)))


def randomised(model, seed):
    """Fill every float tensor (incl. BN buffers) with distinct values so loads are visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return model


def assert_same(a, b, keys=None):
    sa, sb = a.state_dict(), b.state_dict()
    for k in keys if keys is not None else sa:
        assert torch.equal(sa[k], sb[k]), k


def test_strict_round_trip(tmp_path):
    src = randomised(demo_model(0), 1)
    path = tmp_path / 'model.pth'
    torch.save(src.state_dict(), path)
    dst = demo_model(2)
    report = load_model_checkpoint(dst, path)
    assert report.missing == [] and report.unused == []
    assert len(report.used) == len(src.state_dict())
    assert_same(src, dst)


def test_pysot_snapshot_with_module_prefix(tmp_path):
    src = randomised(demo_model(0), 3)
    sd = OrderedDict(('module.' + k, v) for k, v in src.state_dict().items())
    path = tmp_path / 'checkpoint_e3.pth'
    torch.save({'epoch': 3, 'state_dict': sd, 'optimizer': {'param_groups': []}}, path)
    dst = demo_model(4)
    report = load_pretrained(dst, path)
    assert report.missing == [] and report.unused == [] and report.prefix_added == ''
    assert_same(src, dst)
    # The strict loader accepts the same file, also into a compile-style wrapped model.
    wrapper = torch.nn.Module()
    wrapper._orig_mod = demo_model(5)
    load_model_checkpoint(wrapper, path)
    assert_same(src, wrapper._orig_mod)


def test_in_memory_state_dict_and_old_checkpoints_without_counters():
    src = randomised(demo_model(0), 6)
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith('num_batches_tracked')}
    dst = demo_model(7)
    report = load_pretrained(dst, {'state_dict': sd}, strict=True)
    assert report.source == '<state_dict>' and report.missing == []
    assert_same(src, dst, sd)


def test_partial_backbone_file_reports_missing_and_unused(tmp_path, caplog):
    model = demo_model(0)
    src = randomised(demo_model(1), 8).backbone.state_dict()
    partial = {k: v for k, v in src.items() if k.split('.')[0] in ('layer1', 'layer2', 'layer3')}
    partial['fc.weight'] = torch.zeros(10, 4)  # a classifier the backbone does not have
    path = tmp_path / 'alexnet_partial.pth'
    torch.save(partial, path)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger='model.checkpoint'):
        report = load_pretrained(model.backbone, path)
    expected_missing = sorted(k for k in src if k.split('.')[0] in ('layer4', 'layer5')
                              and not k.endswith('num_batches_tracked'))
    assert report.missing == expected_missing
    assert report.unused == ['fc.weight']
    after = model.backbone.state_dict()
    for k in src:
        if k in partial:
            assert torch.equal(after[k], partial[k]), k
        else:
            assert torch.equal(after[k], before[k]), k
    assert str(path) in caplog.text and 'fc.weight' in caplog.text
    assert 'layer5.0.weight' in caplog.text
    with pytest.raises(ValueError, match='missing'):
        load_pretrained(model.backbone, path, strict=True)


def test_features_prefix_retry_as_pysot(tmp_path):
    cfg = load_config(CONFIGS / 'siamrpn_alex_dwxcorr.yaml', overrides=['BACKBONE.KWARGS.width_mult=0.25'])
    legacy = build_model(cfg).backbone  # keys features.N.*
    src = randomised(build_model(cfg), 9).backbone.state_dict()
    bare = {k[len('features.'):]: v for k, v in src.items()}
    path = tmp_path / 'alexnet-bn.pth'
    torch.save(bare, path)
    report = load_pretrained(legacy, path)
    assert report.prefix_added == 'features.' and report.missing == []
    for k, v in src.items():
        assert torch.equal(legacy.state_dict()[k], v), k


def test_nothing_matching_names_file_and_keys(tmp_path):
    path = tmp_path / 'unrelated.pth'
    torch.save({'encoder.block.weight': torch.zeros(3)}, path)
    with pytest.raises(ValueError) as err:
        load_pretrained(demo_model(0).backbone, path)
    assert str(path) in str(err.value) and 'encoder.block.weight' in str(err.value)
    assert 'layer1.0.weight' in str(err.value)


def test_wrong_architecture_errors_name_file_keys_and_shapes(tmp_path):
    path = tmp_path / 'demo.pth'
    torch.save(demo_model(0).state_dict(), path)
    # Same layout, other widths: every conv has another shape.
    wider = demo_model(0, ['BACKBONE.KWARGS.width_mult=1.0', 'RPN.KWARGS.in_channels=256',
                           'RPN.KWARGS.out_channels=256'])
    with pytest.raises(ValueError) as err:
        load_model_checkpoint(wider, path)
    msg = str(err.value)
    assert str(path) in msg and 'shape mismatch' in msg
    assert 'backbone.layer1.0.weight (48, 3, 11, 11) vs model (96, 3, 11, 11)' in msg
    # Other module names (alexnetlegacy: features.N): missing and unexpected keys are listed.
    legacy = build_model(load_config(CONFIGS / 'siamrpn_alex_dwxcorr.yaml',
                                     overrides=['BACKBONE.KWARGS.width_mult=0.5',
                                                'RPN.KWARGS.in_channels=128',
                                                'RPN.KWARGS.out_channels=128']))
    with pytest.raises(ValueError) as err:
        load_model_checkpoint(legacy, path)
    msg = str(err.value)
    assert str(path) in msg
    assert 'missing from the checkpoint' in msg and 'backbone.features.0.weight' in msg
    assert 'unexpected checkpoint keys' in msg and 'backbone.layer1.0.weight' in msg


def test_non_state_dict_and_missing_files(tmp_path):
    path = tmp_path / 'numbers.pth'
    torch.save({'epoch': 3, 'lr': 0.1}, path)
    with pytest.raises(ValueError, match='numbers.pth'):
        load_pretrained(demo_model(0), path)
    with pytest.raises(FileNotFoundError, match='absent.pth'):
        load_pretrained(demo_model(0), tmp_path / 'absent.pth')


def _one_line_about(err, path, words):
    msg = str(err.value)
    assert str(path) in msg and words in msg, msg
    assert '\n' not in msg and 'weights_only' not in msg, msg  # never torch's advice to load unsafely


@pytest.mark.parametrize('content', [b'', b'epoch 3, loss 0.12\nnot a model\n'], ids=['empty', 'text'])
def test_text_or_empty_file_is_named_and_not_a_torch_checkpoint(tmp_path, content):
    path = tmp_path / 'model.pth'
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        load_model_checkpoint(demo_model(0), path)
    _one_line_about(err, path, 'not a torch checkpoint')
    with pytest.raises(ValueError) as err:
        load_pretrained(demo_model(0).backbone, path)
    _one_line_about(err, path, 'not a torch checkpoint')


def test_refused_objects_and_damaged_files_never_suggest_an_unsafe_load(tmp_path):
    import numpy as np

    pickled = tmp_path / 'numpy.pth'
    torch.save({'state_dict': {'w': np.zeros(3)}}, pickled)  # a numpy array: refused by weights_only
    with pytest.raises(ValueError) as err:
        load_model_checkpoint(demo_model(0), pickled)
    _one_line_about(err, pickled, 'weights-only load refuses')
    good = tmp_path / 'good.pth'
    torch.save(demo_model(0).state_dict(), good)
    cut = tmp_path / 'cut.pth'
    cut.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])  # a copy that stopped halfway
    with pytest.raises(ValueError) as err:
        load_model_checkpoint(demo_model(0), cut)
    _one_line_about(err, cut, 'damaged or truncated')


def test_one_loader_and_one_error_type_for_model_and_train():
    import model.checkpoint as mc
    import train.checkpoint as tc

    assert tc.CheckpointError is mc.CheckpointError and issubclass(mc.CheckpointError, ValueError)
    assert issubclass(mc.CheckpointNotFoundError, (mc.CheckpointError, FileNotFoundError))
