"""Config loading: PySOT's schema and defaults, shipped recipes, and clear errors for bad files."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from train.config import ConfigError, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
RECIPE = Path(__file__).resolve().parents[1] / "configs" / "siamrpn_r50_l234_dwxcorr_8gpu.yaml"


def write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_pysots():
    cfg = load_config(None)
    assert cfg.TRAIN.BATCH_SIZE == 32 and cfg.TRAIN.NUM_WORKERS == 1
    assert cfg.TRAIN.THR_HIGH == 0.6 and cfg.TRAIN.THR_LOW == 0.3
    assert (cfg.TRAIN.POS_NUM, cfg.TRAIN.NEG_NUM, cfg.TRAIN.TOTAL_NUM) == (16, 16, 64)
    assert cfg.TRAIN.LR.TYPE == "log" and cfg.TRAIN.LR_WARMUP.EPOCH == 5
    assert cfg.DATASET.NAMES == ("VID", "COCO", "DET", "YOUTUBEBB")
    assert cfg.DATASET.VID.NUM_USE == 100000 and cfg.DATASET.YOUTUBEBB.FRAME_RANGE == 3
    assert cfg.DATASET.SEARCH.SHIFT == 64 and cfg.DATASET.SEARCH.SCALE == 0.18
    assert cfg.BACKBONE.TYPE == "res50" and cfg.BACKBONE.TRAIN_EPOCH == 10
    assert cfg.ANCHOR.RATIOS == (0.33, 0.5, 1, 2, 3)
    assert cfg.TRACK.LOST_INSTANCE_SIZE == 831 and cfg.TRACK.MASK_THERSHOLD == 0.30


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load_and_round_trip(path, tmp_path):
    cfg = load_config(path)
    again = load_config(write(tmp_path, yaml.safe_dump(cfg.to_dict())))
    assert again.to_dict() == cfg.to_dict()


def test_training_recipe_values():
    cfg = load_config(RECIPE)
    assert cfg.TRAIN.BATCH_SIZE == 28 and cfg.TRAIN.EPOCH == 20
    assert cfg.TRAIN.LR.KWARGS["start_lr"] == 0.005 and cfg.TRAIN.LR.KWARGS["end_lr"] == 0.0005
    assert dict(cfg.TRAIN.LR_WARMUP.KWARGS) == {"start_lr": 0.001, "end_lr": 0.005, "step": 1}
    assert cfg.DATASET.NAMES == ("VID", "YOUTUBEBB", "COCO", "DET")
    assert cfg.DATASET.SEARCH.BLUR == 0.2 and cfg.DATASET.NEG == 0.2
    assert cfg.BACKBONE.KWARGS["used_layers"] == (2, 3, 4)
    assert cfg.RPN.KWARGS["weighted"] is True


def test_pysot_style_file_loads_with_defaults(tmp_path):
    # PySOT's files use 4-space indents, quoted strings and omit most keys.
    text = (
        "META_ARC: 'siamrpn_r50_l234_dwxcorr'\n"
        "BACKBONE:\n    TYPE: \"resnet50\"\n    KWARGS:\n        used_layers: [2, 3, 4]\n"
        "TRAIN:\n    BASE_LR: 0.005\n    LR:\n        TYPE: 'log'\n        KWARGS:\n            start_lr: 0.005\n"
    )
    cfg = load_config(write(tmp_path, text))
    assert cfg.TRAIN.BATCH_SIZE == 32  # default where the file is silent
    assert cfg.TRAIN.LR.KWARGS["start_lr"] == 0.005


def test_overrides_are_typed_and_validated():
    cfg = load_config(RECIPE, overrides=["TRAIN.BATCH_SIZE=8", "DATASET.NAMES=[VID, COCO]", "TRAIN.BASE_LR=1"])
    assert cfg.TRAIN.BATCH_SIZE == 8 and cfg.DATASET.NAMES == ("VID", "COCO")
    assert isinstance(cfg.TRAIN.BASE_LR, float)
    assert load_config(RECIPE, overrides=["TRAIN.GRAD_CLIP=1e9"]).TRAIN.GRAD_CLIP == 1e9
    with pytest.raises(ConfigError, match="TRAIN.BATCH_SIZE.*expects int"):
        load_config(RECIPE, overrides=["TRAIN.BATCH_SIZE=eight"])
    with pytest.raises(ConfigError, match="TRAIN.BATCHSIZE"):
        load_config(RECIPE, overrides=["TRAIN.BATCHSIZE=8"])
    with pytest.raises(ConfigError, match="KEY.SUB=value"):
        load_config(RECIPE, overrides=["TRAIN.BATCH_SIZE"])


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "TRAIN:\n  BATCH_SZ: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "TRAIN.BATCH_SZ" in str(err.value) and str(path) in str(err.value)


def test_pysot_long_term_file_is_rejected_like_pysot(tmp_path):
    path = write(tmp_path, "BACKBONE:\n  TYPE: resnet50\n  CHANNELS: [128, 256, 512]\n")
    with pytest.raises(ConfigError, match="BACKBONE.CHANNELS"):
        load_config(path)


def test_wrong_type_names_key(tmp_path):
    path = write(tmp_path, "DATASET:\n  NEG: yes\n")
    with pytest.raises(ConfigError, match="DATASET.NEG.*expects float"):
        load_config(path)


def test_inconsistent_output_size(tmp_path):
    path = write(tmp_path, "TRAIN:\n  OUTPUT_SIZE: 17\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "TRAIN.OUTPUT_SIZE=17" in str(err.value) and "= 25" in str(err.value) and str(path) in str(err.value)


def test_other_consistency_checks(tmp_path):
    with pytest.raises(ConfigError, match="ANCHOR.ANCHOR_NUM"):
        load_config(write(tmp_path, "ANCHOR:\n  RATIOS: [1, 2]\n"))
    with pytest.raises(ConfigError, match="DATASET.NAMES lists 'GOT'"):
        load_config(write(tmp_path, "DATASET:\n  NAMES: [VID, GOT]\n"))
    with pytest.raises(ConfigError, match="probability"):
        load_config(write(tmp_path, "DATASET:\n  SEARCH:\n    BLUR: 1.5\n"))
    with pytest.raises(ConfigError, match="NUM_USE"):
        load_config(write(tmp_path, "DATASET:\n  VID:\n    NUM_USE: 0\n"))


def test_new_dataset_sections_are_allowed_like_pysot(tmp_path):
    path = write(tmp_path, "DATASET:\n  NAMES: [MYSET]\n  MYSET:\n    FRAME_RANGE: 50\n    NUM_USE: 1000\n")
    cfg = load_config(path)
    assert cfg.DATASET.MYSET.FRAME_RANGE == 50
    with pytest.raises(ConfigError, match="dataset section DATASET.OTHER"):
        load_config(write(tmp_path, "DATASET:\n  OTHER:\n    FRAMES: 3\n"))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "TRAIN: [unclosed\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_yaml_syntax_error_is_one_line_with_file_and_line(tmp_path):
    cases = {  # text -> (line:column of the problem, what the parser expected)
        "TRAIN:\n  EPOCH: 3\n  BATCH_SIZE: [4\nRPN:\n  TYPE: x\n":
            ("4:4", "expected ',' or ']', but got ':' (while parsing a flow sequence begun at line 3)"),
        "TRAIN:\n\tEPOCH: 3\n": ("2:1", "found character '\\t' that cannot start any token"),
        "TRAIN:\n  EPOCH: 3\n   BASE_LR: 0.1\n": ("3:11", "mapping values are not allowed here"),
    }
    for text, (where, what) in cases.items():
        path = write(tmp_path, text)
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert "\n" not in str(err.value)
        assert str(err.value).startswith(f"{path}:{where}: not valid YAML: {what}"), str(err.value)
    res = subprocess.run([sys.executable, str(ROOT / "train" / "run.py"), "--cfg", str(path), "--shards", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [f"error: {err.value}"]


def test_max_replaced_frac_is_a_share_or_no_limit():
    assert load_config(None, ["TRAIN.MAX_REPLACED_FRAC=-1"]).TRAIN.MAX_REPLACED_FRAC == -1
    assert load_config(None, ["TRAIN.MAX_REPLACED_FRAC=2.5"]).TRAIN.MAX_REPLACED_FRAC == 2.5
    with pytest.raises(ConfigError, match="MAX_REPLACED_FRAC=-0.5 must be a share"):
        load_config(None, ["TRAIN.MAX_REPLACED_FRAC=-0.5"])


def test_config_is_immutable_and_replace_derives_a_copy():
    cfg = load_config(RECIPE)
    with pytest.raises(AttributeError):
        cfg.TRAIN.BATCH_SIZE = 4
    small = cfg.replace(["TRAIN.BATCH_SIZE=4"])
    assert small.TRAIN.BATCH_SIZE == 4 and cfg.TRAIN.BATCH_SIZE == 28
    assert dict(**cfg.BACKBONE.KWARGS) == {"used_layers": (2, 3, 4)}


def test_config_from_a_saved_dict_is_checked_like_a_file():
    cfg = load_config(RECIPE, overrides=["TRAIN.BATCH_SIZE=4"])
    again = config_from_dict(cfg.to_dict(), "ckpt.pth:config")
    assert again.to_dict() == cfg.to_dict()
    data = cfg.to_dict()
    data["TRAIN"]["BATCHES"] = 3
    with pytest.raises(ConfigError, match=r"ckpt.pth:config.*TRAIN.BATCHES"):
        config_from_dict(data, "ckpt.pth:config")
