"""A node-local disk cache of decoded photos: each photo is decoded, undistorted and downscaled once, stored
as uint8 [H, W, C] (C = 3, or 4 for a photo with alpha: premultiplied colour and alpha, as
:meth:`~grendel_py.data.dataset.Scene.load_image` gives it), and read back memory-mapped, one region at a time.

An entry is one file, ``<uid>-<key>.u8``: a header (magic, format version, height, width, channels, rows per
band, number of bands, CRC-32 of the band table), a CRC-32 per band of 16 rows, padding to 64 bytes, then
the pixels, row-major. The key hashes everything the pixels depend on: the source file (resolved path,
size, modification time), the camera's raw size and distortion, its training size and the format version;
a photo or a data option that changes gives a new key, and the stale entry of that uid is removed when the
new one is written. Entries are written to a temporary file and renamed, so a reader never sees a
half-written one, and the ranks of a node share the folder: two ranks that build the same entry write the
same bytes.

A reader checks an entry's header and size when it opens it, and each band's CRC the first time it reads
from that band, so a rank that reads only its regions never reads (or checksums) the rest of the photo. A
damaged entry is rebuilt. Maps are released least recently used first once they exceed ``map_budget``
bytes; the pages read stay in the OS page cache, shared by the node's ranks, not in a rank's own memory.
One thread may warm entries while another reads regions (a lock guards the table of open entries; photos
are decoded outside it).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import shutil
import struct
import tempfile
import threading
import uuid
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from grendel_py.config import DataConfig
from grendel_py.data.cameras import Camera
from grendel_py.data.dataset import Scene
from grendel_py.errors import InputError, WriteError
from grendel_py.fileio import ROOM_OR_IO, atomic_open, ensure_folder, os_problem

FORMAT = 2
MAGIC = b"GPPHOTO\0"
# magic, format, height, width, channels, band rows, bands, CRC-32 of the band table
HEADER = struct.Struct("<8sIIIIIII")
BAND_ROWS = 16
ALIGN = 64


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """A float image in [0, 1] as uint8, rounded to the nearest level."""
    return image.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def _layout(height: int) -> tuple[int, int]:
    """(number of bands, byte offset of the pixels) of an entry ``height`` rows high."""
    bands = -(-height // BAND_ROWS)
    return bands, -(-(HEADER.size + 4 * bands) // ALIGN) * ALIGN


class Entry:
    """One open cache entry: ``pixels`` uint8 [H, W, C] over the file's map; ``band_crc`` from its table."""

    def __init__(self, path: Path, camera: Camera):
        self.path = path
        with open(path, "rb") as f:
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            magic, version, height, width, channels, band_rows, bands, table_crc = HEADER.unpack_from(self.map, 0)
            n_bands, offset = _layout(camera.height)
            expect = (MAGIC, FORMAT, camera.height, camera.width, BAND_ROWS, n_bands)
            size = offset + channels * height * width
            if (
                (magic, version, height, width, band_rows, bands) != expect
                or channels not in (3, 4)
                or len(self.map) != size
            ):
                raise ValueError("header or size")
            table = self.map[HEADER.size : HEADER.size + 4 * bands]
            if zlib.crc32(table) != table_crc:
                raise ValueError("band table")
        except (ValueError, struct.error):
            self.map.close()
            raise
        self.band_crc = np.frombuffer(table, dtype="<u4")
        self.checked = np.zeros(bands, dtype=bool)
        self.pixels = np.frombuffer(self.map, dtype=np.uint8, count=channels * height * width, offset=offset).reshape(
            height, width, channels
        )
        self.nbytes = len(self.map)

    def check_rows(self, y0: int, y1: int) -> bool:
        """Whether the bands holding rows y0:y1 match their CRCs (each band checked once)."""
        for band in range(y0 // BAND_ROWS, -(-y1 // BAND_ROWS)):
            if not self.checked[band]:
                rows = self.pixels[band * BAND_ROWS : (band + 1) * BAND_ROWS]
                if zlib.crc32(rows) != self.band_crc[band]:
                    return False
                self.checked[band] = True
        return True

    def advise_read(self) -> None:
        """Ask the OS to read the whole entry ahead (asynchronously, into the page cache)."""
        if hasattr(self.map, "madvise") and hasattr(mmap, "MADV_WILLNEED"):
            self.map.madvise(mmap.MADV_WILLNEED)


def photo_cache(cfg: DataConfig, scene: Scene) -> PhotoCache:
    """The photo cache of ``scene`` that the data options ``cfg`` ask for: in ``cfg.cache_dir``, or when that is
    empty in ``grendel_py_photos`` in the node's temporary folder, with ``cfg.cache_map_gb`` mapped at most."""
    folder = cfg.cache_dir or Path(tempfile.gettempdir()) / "grendel_py_photos"
    return PhotoCache(folder, scene, int(cfg.cache_map_gb * 2**30))


class PhotoCache:
    """The decoded photos of ``scene`` in ``folder``, with at most ``map_budget`` bytes of entries mapped.
    Raises InputError, naming the folder, when it cannot be created or written, or when its disk lacks the
    room for the photos not cached yet; WriteError naming it when an entry cannot be written (the disk filled
    up since)."""

    def __init__(self, folder: str | Path, scene: Scene, map_budget: int = 4 << 30):
        self.folder, self.scene, self.map_budget = Path(folder), scene, map_budget
        self._open: OrderedDict[int, Entry] = OrderedDict()
        self._lock = threading.Lock()
        ensure_folder(self.folder)
        probe = self.folder / f".probe.{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"\0" * ALIGN)
            probe.unlink()
        except OSError as e:
            if e.errno in ROOM_OR_IO:
                raise WriteError(self.folder, "the photo cache", os_problem(e)) from None
            raise InputError(self.folder, f"photo cache folder is not writable: {os_problem(e, self.folder)}") from None
        missing = sum(self.entry_bytes(c, scene.channels(c)) for c in scene.cameras if not self.path(c).is_file())
        free = shutil.disk_usage(self.folder).free
        if missing > free:
            raise InputError(
                self.folder,
                f"photo cache needs {missing / 1e9:.2f} GB more but its disk has {free / 1e9:.2f} GB free; "
                "set data.cache_dir to a larger disk",
            )

    @staticmethod
    def entry_bytes(camera: Camera, channels: int) -> int:
        return _layout(camera.height)[1] + channels * camera.height * camera.width

    def key(self, camera: Camera) -> str:
        """What the cached pixels of ``camera`` depend on, hashed (16 hex digits)."""
        src = self.scene.image_source(camera)
        stat = src.path.stat()
        record = {
            "format": FORMAT,
            "file": str(src.path.resolve()),
            "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "raw": [src.width, src.height],
            "intrinsics": [float(v) for v in src.intrinsics],
            "size": [camera.width, camera.height],
        }
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]

    def path(self, camera: Camera) -> Path:
        return self.folder / f"{camera.uid:06d}-{self.key(camera)}.u8"

    def warm(self, camera: Camera) -> None:
        """Make sure the camera's entry exists (decoding the photo if not) and ask the OS to read it ahead."""
        self._entry(camera).advise_read()

    def region(self, camera: Camera, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows y0:y1, columns x0:x1 of the photo (clipped to it), uint8 [h, w, C], a copy: only the bands holding those
        rows are read and checked; a damaged entry is rebuilt first."""
        y0, y1 = max(y0, 0), min(y1, camera.height)
        x0, x1 = max(x0, 0), min(x1, camera.width)
        entry = self._entry(camera)
        if y1 > y0 and not entry.check_rows(y0, y1):
            self._release(camera.uid)
            self._build(camera, self.path(camera))
            entry = self._entry(camera)
            if not entry.check_rows(y0, y1):
                raise InputError(
                    entry.path, "photo cache entry is damaged right after it was written (disk or memory fault?)"
                )
        return np.array(entry.pixels[y0:y1, x0:x1])

    def photo(self, camera: Camera) -> np.ndarray:
        """The whole photo, uint8 [H, W, C] (a copy)."""
        return self.region(camera, 0, camera.height, 0, camera.width)

    def _entry(self, camera: Camera) -> Entry:
        with self._lock:
            entry = self._open.get(camera.uid)
            if entry is not None:
                self._open.move_to_end(camera.uid)
                return entry
        path = self.path(camera)
        try:
            entry = Entry(path, camera)
        except (OSError, ValueError, struct.error):  # missing, or damaged header or size
            self._build(camera, path)
            entry = Entry(path, camera)
        with self._lock:
            if camera.uid in self._open:  # the other thread opened it meanwhile
                return self._open[camera.uid]
            self._open[camera.uid] = entry
            while sum(e.nbytes for e in self._open.values()) > self.map_budget and len(self._open) > 1:
                self._open.popitem(last=False)
        return entry

    def _release(self, uid: int) -> None:
        """Forget an open entry; its map is unmapped once no reader holds it (no explicit close, so a read
        in progress on another thread stays valid)."""
        with self._lock:
            self._open.pop(uid, None)

    def _build(self, camera: Camera, path: Path) -> None:
        pixels = to_uint8(self.scene.load_image(camera)).numpy()
        bands, offset = _layout(camera.height)
        table = np.array(
            [zlib.crc32(pixels[b * BAND_ROWS : (b + 1) * BAND_ROWS]) for b in range(bands)], dtype="<u4"
        ).tobytes()
        header = HEADER.pack(
            MAGIC, FORMAT, camera.height, camera.width, pixels.shape[2], BAND_ROWS, bands, zlib.crc32(table)
        )
        try:
            with atomic_open(path) as f:
                f.write((header + table).ljust(offset, b"\0"))
                f.write(pixels.data)
        except WriteError as e:
            raise e.named(
                self.folder, f"the photo cache ({path.name})", "set data.cache_dir to a disk with room"
            ) from None
        for stale in self.folder.glob(f"{camera.uid:06d}-*.u8"):
            if stale != path:
                stale.unlink(missing_ok=True)
