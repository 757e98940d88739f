"""Serve a tracker to the official VOT toolkit over TraX (the `vot-trax` package).

The toolkit sends an image path and the ground-truth region to initialise on (a rectangle or a
polygon: both are accepted and turned into PySOT's initial box, `regions.init_box`, as our own
protocol does) and then one image path per frame; each reply is the tracker's region: its
`polygon` when it returns one, else its `bbox` as a rectangle.  The toolkit itself decides
failures and re-initialisations, so runs made this way and runs of `SupervisedProtocol` are the
same.  `tools/trax_tracker.py` builds the tracker from a config and a checkpoint.
"""
from __future__ import annotations

import cv2
import numpy as np

from track.vot.protocol import tracked_region
from track.vot.regions import init_box


def _import_trax():
    try:
        import trax
        import trax.image
    except ImportError:
        raise ImportError('the TraX entry point needs the vot-trax package (pip install vot-trax)') from None
    return trax


def _read(image, trax) -> np.ndarray:
    if not isinstance(image, trax.image.FileImage):
        raise ValueError(f'expected an image path from the toolkit, got {type(image).__name__}')
    img = cv2.imread(image.path(), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f'cannot read {image.path()}')
    return img


def _region_values(region, trax) -> np.ndarray:
    if isinstance(region, trax.Rectangle):
        return np.array(region.bounds(), np.float64)
    if isinstance(region, trax.Polygon):
        return np.array([v for point in region for v in point], np.float64)
    raise ValueError(f'unsupported initialisation region {type(region).__name__}')


def _reply(region: np.ndarray, trax):
    if len(region) == 4:
        return trax.Rectangle.create(*(float(v) for v in region))
    return trax.Polygon.create([(float(x), float(y)) for x, y in region.reshape(-1, 2)])


def serve(tracker, name: str = 'siamtrain') -> None:
    """Answer the toolkit's requests with `tracker` (init/track API) until it quits."""
    trax = _import_trax()
    with trax.Server([trax.Region.RECTANGLE, trax.Region.POLYGON], [trax.Image.PATH],
                     tracker_name=name) as server:
        while True:
            request = server.wait()
            if request.type == 'quit':
                break
            img = _read(request.image['color'], trax)
            if request.type == 'initialize':
                box = init_box(_region_values(request.objects[0][0], trax))
                tracker.init(img, box)
                region = np.asarray(box, np.float64)
            else:
                region = tracked_region(tracker.track(img))
            server.status([(_reply(region, trax), {})])
