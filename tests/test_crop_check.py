"""pipeline.crop_check: the cheap checks of a crop's bytes, on real JPEGs written by OpenCV."""
import cv2
import numpy as np
import pytest

from pipeline.crop_check import crop_problem, jpeg_size, looks_like_jpeg


def encode(width: int, height: int, *flags) -> bytes:
    image = np.random.default_rng(width * height).integers(0, 255, (height, width, 3), np.uint8)
    ok, data = cv2.imencode(".jpg", image, list(flags))
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("flags", [(), (cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
                                   (cv2.IMWRITE_JPEG_OPTIMIZE, 1, cv2.IMWRITE_JPEG_QUALITY, 60)],
                         ids=["baseline", "progressive", "optimised"])
@pytest.mark.parametrize("size", [(511, 511), (271, 271), (640, 360), (1, 1)])
def test_jpeg_size_reads_the_frame_header(size, flags):
    assert jpeg_size(encode(*size, *flags)) == size


def test_jpeg_size_skips_fill_bytes_and_app_segments():
    data = encode(64, 48)
    app = b"\xff\xe1" + (2 + 300).to_bytes(2, "big") + bytes(300)   # an EXIF-sized segment
    padded = data[:2] + app + b"\xff\xff" + data[2:]                # fill byte before a marker
    assert jpeg_size(padded) == (64, 48)


def test_malformed_headers_give_no_size():
    data = encode(64, 48)
    sof = data.find(b"\xff\xc0")
    assert jpeg_size(data[:sof + 6]) is None                 # cut inside the frame header
    assert jpeg_size(b"\xff\xd8" + bytes(100)) is None       # no marker after SOI
    assert jpeg_size(data[:2] + b"\xff\xda\x00\x08" + data[2:]) is None   # scan before frame
    assert jpeg_size(data[:sof] + b"\xff\xc0\x00\x01" + data[sof + 4:]) is None  # length < 2


def test_crop_problem():
    good = encode(511, 511)
    assert crop_problem(good, 511) is None
    assert looks_like_jpeg(good) and not looks_like_jpeg(good[:-100])
    assert crop_problem(good[:500], 511) == "not a complete JPEG"
    assert crop_problem(b"\xff\xd8" + bytes(100) + b"\xff\xd9", 511) == "no JPEG frame header"
    assert crop_problem(encode(271, 271), 511) == ("crop is 271x271 px, the shard's crop size "
                                                   "is 511x511")
    assert crop_problem(encode(511, 510), 511).startswith("crop is 511x510 px")
