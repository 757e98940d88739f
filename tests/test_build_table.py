"""The compact parse (VideoTable): image paths stored as one template per track plus a number per
entry, reproduced exactly (irregular names kept verbatim), and about 45 bytes per entry."""
import pytest

from pipeline.ingest.spec import TrackSpec, VideoTableBuilder, path_template


@pytest.mark.parametrize('paths', [
    ['/d/Data/VID/train/a/v/000010.JPEG', '/d/Data/VID/train/a/v/000011.JPEG', '/d/Data/VID/train/a/v/000100.JPEG'],
    ['/y/3/abc_1000_3_0.jpg', '/y/3/abc_12000_3_0.jpg', '/y/3/abc_99000_3_0.jpg'],   # YTB: timestamps, one width short
    ['/c/0001.00.x.jpg', '/c/0002.00.x.jpg'],
    ['/only/one/file.jpg'],
    ['/s/a.jpg', '/s/a1.jpg', '/s/a12.jpg'],                                          # an empty middle
])
def test_numbered_paths_round_trip(paths):
    prefix, suffix, middles = path_template(paths)
    assert None not in middles
    assert [prefix + m + suffix for m in middles] == paths


def test_irregular_paths_are_not_templated():
    assert path_template(['/x/left.jpg', '/x/right.jpg'])[2] == [None, None]


def test_table_reproduces_every_video():
    b = VideoTableBuilder()
    videos = {
        'a/v0': [TrackSpec(0, [0, 1, 2], [(1.5, 2, 30, 40), (2, 3, 31, 41), (3, 4, 32, 42)],
                           [f'/r/a/v0/{f:06d}.JPEG' for f in (0, 1, 2)]),
                 TrackSpec(7, [5], [(0, 0, 9, 9)], ['/r/a/v0/000005.JPEG'])],
        'b/odd': [TrackSpec(1, [3, 4], [(1, 1, 5, 5), (2, 2, 6, 6)], ['/r/b/first.jpg', '/r/b/second.jpg'])],
    }
    for name, tracks in videos.items():
        b.add(name, tracks)
    table = b.finish(precropped=True)
    assert len(table) == 2 and table.num_entries() == 6 and table.num_entries(1) == 2 and table.entry_start(1) == 4
    for v, (name, tracks) in enumerate(videos.items()):
        got = table.video(v)
        assert got.name == name and got.precropped and not got.normalized
        assert [(t.track_id, t.frames, t.images) for t in got.tracks] == \
            [(t.track_id, t.frames, t.images) for t in tracks]
        assert [list(map(tuple, t.boxes)) for t in got.tracks] == \
            [[tuple(map(float, bx)) for bx in t.boxes] for t in tracks]


def test_table_is_compact():
    b = VideoTableBuilder()
    for v in range(200):
        b.add(f'ILSVRC2015_VID_train_0000/ILSVRC2015_train_{v:08d}',
              [TrackSpec(t, list(range(50)), [(1.0, 2.0, 3.0, 4.0)] * 50,
                         [f'/data/ILSVRC2015/Data/VID/train/x/{v:08d}/{f:06d}.JPEG' for f in range(50)])
               for t in range(3)])
    table = b.finish()
    assert table.nbytes() / table.num_entries() < 50
