"""Real damage to real shard files, for the tests: truncation, overwritten B-tree pages, flipped
crop bytes.  Nothing is mocked: the functions write into data.mdb as a failing disk would."""
import os
import struct
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# LMDB meta page (after the 16-byte page header): the main DB's root page number.
_MAIN_ROOT_AT = 16 + 24 + 48 + 40


def data_file(folder, shard: int = 0) -> Path:
    return Path(folder) / f'shard-{shard:05d}' / 'data.mdb'


def truncate_shard(folder, shard: int = 0, keep: float = 0.5) -> Path:
    """Cut data.mdb of one shard to `keep` of its size (page aligned, above the two meta pages)."""
    path = data_file(folder, shard)
    size = path.stat().st_size
    new = max(3 * 4096, int(size * keep) // 4096 * 4096)
    assert new < size, f'{path} is too small to truncate ({size} bytes)'
    os.truncate(path, new)
    return path


def overwrite_btree_root(folder, shard: int = 0) -> Path:
    """Overwrite the main B-tree's root page of one shard with garbage (both meta pages agree on
    it for a finished shard: take the newer one)."""
    path = data_file(folder, shard)
    with open(path, 'r+b') as f:
        head = f.read(8192)
        metas = [(struct.unpack_from('<Q', head, m + 16 + 128)[0], struct.unpack_from('<Q', head, m + _MAIN_ROOT_AT)[0])
                 for m in (0, 4096)]
        root = max(metas)[1]
        f.seek(root * 4096)
        f.write(bytes(range(256)) * 16)
    return path


def overwrite_crop(reader, entry: int, data: bytes) -> Path:
    """Overwrite a stored crop in place in data.mdb with `data` (zero-padded or cut to its length)."""
    off, n = int(reader.entry_offset[entry]), int(reader.entry_length[entry])
    assert off > 0, 'entry is stored inside a B-tree page'
    path = data_file(reader.folder, int(reader.entry_shard[entry]))
    with open(path, 'r+b') as f:
        f.seek(off)
        f.write(data[:n].ljust(n, b'\0'))
    return path


def fit_jpeg(jpeg: bytes, n: int) -> bytes:
    """`jpeg` grown to exactly n bytes with comment segments after SOI (still a complete JPEG), so
    it can replace a stored crop in place."""
    assert jpeg[:2] == b'\xff\xd8' and len(jpeg) + 4 <= n, (len(jpeg), n)
    fill, segments = n - len(jpeg), []
    while fill:
        body = min(fill - 4, 65533) if fill - 4 <= 65533 else min(65533, fill - 8)
        segments.append(b'\xff\xfe' + (body + 2).to_bytes(2, 'big') + bytes(body))
        fill -= body + 4
    return jpeg[:2] + b''.join(segments) + jpeg[2:]


def vouch_for_crop(reader, entry: int):
    """Record the CRC32 of the crop's current bytes in the index, as if the damaged value had been
    stored that way at build time (a crop that passes the checksum but is still unusable)."""
    import zlib
    off, n = int(reader.entry_offset[entry]), int(reader.entry_length[entry])
    with open(data_file(reader.folder, int(reader.entry_shard[entry])), 'rb') as f:
        f.seek(off)
        crc = zlib.crc32(f.read(n))
    import msgpack
    meta = msgpack.unpackb((reader.folder / 'index.msgpack').read_bytes(), raw=False)
    spec = meta['arrays']['entry_crc']
    with open(reader.folder / 'index.arrays', 'r+b') as f:
        f.seek(spec['offset'] + 4 * entry)
        f.write(int(crc).to_bytes(4, 'little'))


def flip_crop_byte(reader, entry: int, mask: bool = False) -> Path:
    """Flip one byte in the middle of a stored crop (or of its mask's PNG, which follows the JPEG), in
    place in data.mdb (a silent disk error)."""
    shard = int(reader.entry_shard[entry])
    off, n = int(reader.entry_offset[entry]), int(reader.entry_length[entry])
    assert off > 0, 'entry is stored inside a B-tree page'
    if mask:
        off, n = off + n, int(reader.entry_mask_length[entry])
        assert n > 0, 'the mask is empty'
    path = data_file(reader.folder, shard)
    with open(path, 'r+b') as f:
        f.seek(off + n // 2)
        b = f.read(1)
        f.seek(off + n // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    return path


def run_python(code: str, timeout: float = 120):
    """Run `code` in a fresh interpreter (repo on the path); returns the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    return subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def run_build_cli(*args, timeout: float = 300):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    return subprocess.run([sys.executable, str(REPO / 'tools/build_lmdb.py'), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
