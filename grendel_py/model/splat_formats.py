"""The file formats web viewers read, besides the INRIA PLY (:mod:`grendel_py.model.ply`): encoders that work
on any run of consecutive records (so that every rank can encode its own shard, see
:mod:`grendel_py.parallel.export`) and decoders (for round trips and for reading such files back).

- ``splat``: antimatter15's ``.splat``, 32 bytes per Gaussian, no header: position (3 float32), scale
  (3 float32, linear), RGBA (4 uint8: ``0.5 + C0 * f_dc`` and ``sigmoid(opacity)``, x255 truncated),
  rotation (4 uint8, ``q / |q| * 128 + 128`` truncated, w first). Colour only (no higher SH bands).
- ``spz``: Niantic's SPZ, version 3: one gzip stream of a 16-byte header and planar arrays (positions as
  24-bit fixed point with 12 fractional bits, alphas, colours, log scales, smallest-three rotations,
  SH bytes, coefficient-major with the colour channels interleaved). Coordinates are stored as the PLY
  holds them (no RUB flip), as SuperSplat, splat-transform, Spark and Niantic's own ``ply_to_spz`` store
  them; positions must lie within +-2048 (the fixed point's range).
- ``ply-compressed``: the compressed PLY of SuperSplat and PlayCanvas: chunks of 256 consecutive Gaussians
  with float bounds (position, log scale clamped to +-20, colour), then 4 uint32 per Gaussian (position
  and scale 11/10/11 bits within the chunk's bounds, smallest-three rotation 2+3x10 bits, RGBA 8 bits
  each with the alpha absolute), then one byte per higher SH coefficient (``f * 32 + 128``, truncated).
  Gaussians are Morton-ordered (within each rank's shard) so that chunk bounds stay tight.

Rounding and byte layouts follow the reference writers (antimatter15/splat convert.py, nianticlabs/spz
load-spz.cc, playcanvas/splat-transform write-compressed-ply.ts).
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from grendel_py.errors import InputError
from grendel_py.model.gaussians import C0, MAX_SH_DEGREE, Gaussians, num_sh_rest, sh0_to_rgb
from partition.spatial import morton_codes

FORMATS = ("ply", "splat", "spz", "ply-compressed")
"""The formats :func:`grendel_py.parallel.export.write_merged` writes ("ply": the INRIA layout)."""
FILE_NAMES = {"ply": "model.ply", "splat": "model.splat", "spz": "model.spz", "ply-compressed": "model.compressed.ply"}
"""The name of the final model in each format in a run folder."""

SPLAT_RECORD = 32
SPZ_MAGIC = 0x5053474E  # "NGSP"
SPZ_VERSION = 3
SPZ_FRACTIONAL_BITS = 12
SPZ_ANTIALIASED = 0x1
SPZ_COLOR_SCALE = 0.15
SPZ_MAX_POSITION = (1 << 23) / (1 << SPZ_FRACTIONAL_BITS)  # 2048: 24-bit signed fixed point
CHUNK = 256  # Gaussians per chunk of the compressed PLY
SCALE_LIMIT = 20.0  # compressed PLY: chunk log-scale bounds are clamped to +-this
_SQRT1_2 = math.sqrt(0.5)


def _round_away(x: np.ndarray) -> np.ndarray:
    """C's ``std::round``: halves away from zero (numpy's ``round`` goes to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """SPZ's toUint8: rounded half away from zero, clamped to 0..255."""
    return np.clip(_round_away(x), 0, 255).astype(np.uint8)


def _arrays(g: Gaussians) -> dict[str, np.ndarray]:
    """The model's fields as float64 numpy arrays on the host (shN as [N, K-1, 3])."""
    h = g.to("cpu")
    return {
        "means": h.means.detach().double().numpy(),
        "log_scales": h.log_scales.detach().double().numpy(),
        "quats": h.quats.detach().double().numpy(),
        "opacity": h.opacity_logits.detach().double().numpy(),
        "dc": h.sh0.detach().double().numpy().reshape(len(g), 3),
        "shN": h.shN.detach().double().numpy(),
    }


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1.0 - 1e-6)
    return np.log(p / (1.0 - p))


def _unit_quats(q: np.ndarray) -> np.ndarray:
    """Normalised quaternions; a zero quaternion becomes the identity (w = 1)."""
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    identity = np.zeros_like(q)
    identity[:, 0] = 1.0
    return np.where(norm > 0, q / np.where(norm > 0, norm, 1.0), identity)


def _model(means, log_scales, quats, opacity, dc, shN) -> Gaussians:
    """A Gaussians from decoded float arrays (ids 0..N-1)."""
    n = len(means)
    f = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return Gaussians(
        f(means), f(log_scales), f(quats), f(opacity).reshape(n), f(dc).reshape(n, 1, 3), f(shN), torch.arange(n)
    )


# ---------------------------------------------------------------------------------------------------- .splat


def splat_records(g: Gaussians) -> np.ndarray:
    """uint8 [N, 32]: the ``.splat`` records of ``g``, in its order."""
    a = _arrays(g)
    n = len(g)
    out = np.empty((n, SPLAT_RECORD), dtype=np.uint8)
    out[:, 0:12] = a["means"].astype("<f4").view(np.uint8).reshape(n, 12)
    out[:, 12:24] = np.exp(a["log_scales"]).astype("<f4").view(np.uint8).reshape(n, 12)
    # sh0_to_rgb in float64: truncated to bytes
    rgba = np.concatenate([0.5 + C0 * a["dc"], _sigmoid(a["opacity"])[:, None]], axis=1)
    out[:, 24:28] = np.clip(rgba * 255.0, 0, 255).astype(np.uint8)
    out[:, 28:32] = np.clip(_unit_quats(a["quats"]) * 128.0 + 128.0, 0, 255).astype(np.uint8)
    return out


def read_splat(path: str | Path) -> Gaussians:
    """A ``.splat`` file as Gaussians of SH degree 0 (InputError when its size is not a multiple of 32)."""
    data = Path(path).read_bytes()
    if len(data) % SPLAT_RECORD:
        raise InputError(path, f"{len(data)} bytes is not a whole number of {SPLAT_RECORD}-byte .splat records")
    rec = np.frombuffer(data, dtype=np.uint8).reshape(-1, SPLAT_RECORD)
    n = len(rec)
    means = rec[:, 0:12].copy().view("<f4").reshape(n, 3)
    scales = rec[:, 12:24].copy().view("<f4").reshape(n, 3)
    rgba = rec[:, 24:28] / 255.0
    quats = _unit_quats((rec[:, 28:32].astype(np.float64) - 128.0) / 128.0)
    with np.errstate(divide="ignore"):
        log_scales = np.log(scales)
    return _model(means, log_scales, quats, _logit(rgba[:, 3]), (rgba[:, :3] - 0.5) / C0, np.zeros((n, 0, 3)))


# ---------------------------------------------------------------------------------------------------- SPZ


def spz_widths(sh_degree: int) -> dict[str, int]:
    """Bytes per Gaussian of each planar SPZ array, in file order."""
    return {"positions": 9, "alphas": 1, "colors": 3, "scales": 3, "rotations": 4, "sh": 3 * num_sh_rest(sh_degree)}


def spz_header(total: int, sh_degree: int, antialiased: bool) -> bytes:
    """The 16-byte header of an SPZ payload (before compression)."""
    flags = SPZ_ANTIALIASED if antialiased else 0
    return struct.pack("<IIIBBBB", SPZ_MAGIC, SPZ_VERSION, total, sh_degree, SPZ_FRACTIONAL_BITS, flags, 0)


def spz_columns(g: Gaussians) -> dict[str, np.ndarray]:
    """uint8 [N, width] per planar array (:func:`spz_widths`) for the Gaussians of ``g``, in its order.
    ValueError when a position lies beyond the 24-bit fixed point's +-2048."""
    a = _arrays(g)
    n = len(g)
    far = np.abs(a["means"]) >= SPZ_MAX_POSITION
    if far.any():
        row = int(np.flatnonzero(far.any(axis=1))[0])
        where = [round(v, 3) for v in a["means"][row].tolist()]
        raise ValueError(
            f"SPZ stores positions within +-{SPZ_MAX_POSITION:g}; Gaussian (id {int(g.ids[row])}) is at {where}"
        )
    fixed = _round_away(a["means"] * (1 << SPZ_FRACTIONAL_BITS)).astype(np.int64) & 0xFFFFFF
    positions = np.stack([(fixed >> s) & 0xFF for s in (0, 8, 16)], axis=-1).astype(np.uint8).reshape(n, 9)
    k = a["shN"].shape[1]
    q = a["shN"].reshape(n, 3 * k)  # coefficient-major, channels interleaved: SPZ's order already
    bucket = np.where(np.arange(3 * k) < 9, 8, 16)  # 5 bits for degree 1, 4 for the rest
    levels = _round_away(q * 128.0) + 128.0
    sh = np.clip((levels + bucket // 2) // bucket * bucket, 0, 255).astype(np.uint8)
    return {
        "positions": positions,
        "alphas": _to_uint8(_sigmoid(a["opacity"]) * 255.0)[:, None],
        "colors": _to_uint8(a["dc"] * (SPZ_COLOR_SCALE * 255.0) + 0.5 * 255.0),
        "scales": _to_uint8((a["log_scales"] + 10.0) * 16.0),
        "rotations": _smallest_three_spz(_unit_quats(a["quats"])),
        "sh": sh,
    }


def _smallest_three_spz(q: np.ndarray) -> np.ndarray:
    """SPZ v3 rotations, uint8 [N, 4] (a little-endian uint32 each): :func:`_pack_smallest_three` of (x, y, z, w)
    with each kept component as sign + 9-bit magnitude / sqrt(1/2)."""
    word = _pack_smallest_three(
        q[:, [1, 2, 3, 0]],
        lambda v: (
            (v < 0).astype(np.uint64) << np.uint64(9) | np.floor(511.0 * np.abs(v) / _SQRT1_2 + 0.5).astype(np.uint64)
        ),
    )
    return word.astype("<u4").view(np.uint8).reshape(len(q), 4)


def _pack_smallest_three(q: np.ndarray, encode: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """uint64 [N] "smallest three" words of unit quaternions ``q`` [N, 4] (in the format's component order):
    the index of the largest |component| in bits 31-30, then ``encode`` (10 bits) of each other component, in
    ascending index order, the quaternion's sign chosen so that the dropped component is non-negative."""
    largest = np.argmax(np.abs(q), axis=1)
    q = q * np.where(np.take_along_axis(q, largest[:, None], axis=1) < 0, -1.0, 1.0)
    word = largest.astype(np.uint64)
    for i in range(4):
        word = np.where(largest != i, word << np.uint64(10) | encode(q[:, i]).astype(np.uint64), word)
    return word


def _unpack_smallest_three(word: np.ndarray, decode: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """float64 [N, 4] quaternions (in the format's component order) from :func:`_pack_smallest_three` words,
    ``decode`` taking each kept component's 10 bits; the dropped one is ``sqrt(1 - the others' squares)``."""
    word = word.astype(np.uint64)
    largest = (word >> np.uint64(30)).astype(np.int64)
    q = np.zeros((len(word), 4))
    for i in (3, 2, 1, 0):
        keep = largest != i
        q[:, i] = np.where(keep, decode(word & np.uint64(1023)), 0.0)
        word = np.where(keep, word >> np.uint64(10), word)
    q[np.arange(len(word)), largest] = np.sqrt(np.maximum(0.0, 1.0 - (q**2).sum(axis=1)))
    return q


def spz_compress(payload: Path, out, chunk_bytes: int = 1 << 24) -> None:
    """Stream the uncompressed SPZ ``payload`` file into the open binary file ``out`` as ONE gzip member
    (readers stop after the first), reading ``chunk_bytes`` at a time."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: gzip container
    with open(payload, "rb") as f:
        while block := f.read(chunk_bytes):
            out.write(compressor.compress(block))
    out.write(compressor.flush())


def read_spz(path: str | Path) -> Gaussians:
    """An SPZ file (versions 2 and 3, gzip) as Gaussians; coordinates as stored (see the module docstring)."""
    try:
        data = gzip.decompress(Path(path).read_bytes())
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(path, f"not a gzip-compressed SPZ file: {e}") from None
    if len(data) < 16:
        raise InputError(path, "SPZ payload shorter than its 16-byte header")
    magic, version, n, degree, bits, _, _ = struct.unpack("<IIIBBBB", data[:16])
    if magic != SPZ_MAGIC or version not in (2, 3) or degree > MAX_SH_DEGREE:
        raise InputError(
            path, f"not an SPZ file this reader knows (magic {magic:#x}, version {version}, SH degree {degree})"
        )
    widths = spz_widths(degree)
    if version == 2:
        widths["rotations"] = 3
    if len(data) != 16 + n * sum(widths.values()):
        raise InputError(path, f"SPZ payload of {len(data)} bytes does not hold {n} Gaussians of SH degree {degree}")
    cols, at = {}, 16
    for name, w in widths.items():
        cols[name] = np.frombuffer(data, dtype=np.uint8, count=n * w, offset=at).reshape(n, w).astype(np.int64)
        at += n * w
    p = cols["positions"].reshape(n, 3, 3)
    fixed = p[..., 0] | p[..., 1] << 8 | p[..., 2] << 16
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
    k = num_sh_rest(degree)
    return _model(
        fixed / float(1 << bits),
        cols["scales"] / 16.0 - 10.0,
        _spz_rotations(cols["rotations"], version),
        _logit(cols["alphas"][:, 0] / 255.0),
        (cols["colors"] / 255.0 - 0.5) / SPZ_COLOR_SCALE,
        ((cols["sh"] - 128.0) / 128.0).reshape(n, k, 3),
    )


def _spz_rotations(b: np.ndarray, version: int) -> np.ndarray:
    """(w, x, y, z) quaternions from SPZ rotation bytes."""
    if version == 2:
        xyz = b / 127.5 - 1.0
        w = np.sqrt(np.maximum(0.0, 1.0 - (xyz**2).sum(axis=1)))
        return np.concatenate([w[:, None], xyz], axis=1)
    word = b[:, 0] | b[:, 1] << 8 | b[:, 2] << 16 | b[:, 3] << 24
    sign = lambda bits: np.where(bits >> np.uint64(9) == 1, -1.0, 1.0)  # noqa: E731
    xyzw = _unpack_smallest_three(word, lambda bits: sign(bits) * _SQRT1_2 * (bits & np.uint64(511)) / 511.0)
    return xyzw[:, [3, 0, 1, 2]]


# ---------------------------------------------------------------------------------------------- compressed PLY

_CHUNK_PROPS = (
    [f"{m}_{a}" for m in ("min", "max") for a in "xyz"]
    + [f"{m}_scale_{a}" for m in ("min", "max") for a in "xyz"]
    + [f"{m}_{c}" for m in ("min", "max") for c in "rgb"]
)
_VERTEX_PROPS = ["packed_position", "packed_rotation", "packed_scale", "packed_color"]


def compressed_header(total: int, sh_degree: int, antialiased: bool) -> bytes:
    """The header of a compressed PLY holding ``total`` Gaussians of ``sh_degree``."""
    lines = ["ply", "format binary_little_endian 1.0", "comment Generated by grendel_py"]
    if antialiased:
        lines.append("comment SplatRenderMode: mip")
    lines.append(f"element chunk {-(-total // CHUNK)}")
    lines += [f"property float {p}" for p in _CHUNK_PROPS]
    lines.append(f"element vertex {total}")
    lines += [f"property uint {p}" for p in _VERTEX_PROPS]
    if sh_degree > 0:
        lines.append(f"element sh {total}")
        lines += [f"property uchar f_rest_{i}" for i in range(3 * num_sh_rest(sh_degree))]
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")


def compressed_sizes(total: int, sh_degree: int) -> tuple[int, int, int]:
    """Bytes of the chunk, vertex and sh elements of a compressed PLY of ``total`` Gaussians."""
    return (
        -(-total // CHUNK) * 4 * len(_CHUNK_PROPS),
        total * 4 * len(_VERTEX_PROPS),
        total * 3 * num_sh_rest(sh_degree),
    )


def morton_order(means: torch.Tensor) -> torch.Tensor:
    """A stable order of the rows of ``means`` [N, 3] along a Morton curve over their box
    (:func:`partition.spatial.morton_codes`)."""
    if len(means) == 0:
        return torch.zeros(0, dtype=torch.int64)
    return torch.sort(morton_codes(means.detach().cpu()), stable=True).indices


def chunk_features(g: Gaussians) -> np.ndarray:
    """float32 [N, 9] per Gaussian: position, log scale and colour (``C0 * f_dc + 0.5``), whose per-chunk
    minimum and maximum are the chunk's bounds."""
    h = g.to("cpu")
    return torch.cat([h.means.detach(), h.log_scales.detach(), sh0_to_rgb(h.sh0.detach())], dim=1).float().numpy()


def chunk_bounds(features: np.ndarray, first_row: int) -> tuple[np.ndarray, np.ndarray]:
    """The chunks that rows ``first_row``.. (``features`` from :func:`chunk_features`) fall in, int64 [C], and
    each one's bounds over those rows only, float32 [C, 2, 9] (min, max)."""
    rows = first_row + np.arange(len(features))
    chunks, starts = np.unique(rows // CHUNK, return_index=True)
    if not len(chunks):
        return chunks, np.zeros((0, 2, 9), dtype=np.float32)
    return chunks, np.stack([np.minimum.reduceat(features, starts), np.maximum.reduceat(features, starts)], axis=1)


def merge_bounds(parts: list[tuple[np.ndarray, np.ndarray]]) -> dict[int, np.ndarray]:
    """Chunk -> bounds [2, 9] over every part that has rows in it (parts from :func:`chunk_bounds`)."""
    merged: dict[int, np.ndarray] = {}
    for chunks, bounds in parts:
        for c, b in zip(chunks.tolist(), bounds):
            if c in merged:
                merged[c] = np.stack([np.minimum(merged[c][0], b[0]), np.maximum(merged[c][1], b[1])])
            else:
                merged[c] = b.copy()
    return merged


def compressed_records(
    g: Gaussians, first_row: int, bounds: dict[int, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The compressed-PLY records of ``g``, rows ``first_row``.. of the file, given every chunk's final
    ``bounds`` (:func:`merge_bounds`): (the chunks whose first row is here, int64 [C]; their records,
    float32 [C, 18]; the vertex records, uint32 [N, 4]; the SH bytes, uint8 [N, 3 (K-1)])."""
    a = _arrays(g)
    n = len(g)
    rows = first_row + np.arange(n)
    chunk = rows // CHUNK
    c0 = first_row // CHUNK
    per_chunk = (
        np.stack([bounds[c] for c in range(c0, c0 + len(np.unique(chunk)))]).astype(np.float64)
        if n
        else np.zeros((0, 2, 9))
    )
    lo, hi = per_chunk[chunk - c0, 0], per_chunk[chunk - c0, 1]
    lo[:, 3:6], hi[:, 3:6] = (
        np.clip(lo[:, 3:6], -SCALE_LIMIT, SCALE_LIMIT),
        np.clip(hi[:, 3:6], -SCALE_LIMIT, SCALE_LIMIT),
    )
    features = chunk_features(g).astype(np.float64)
    t = np.where(hi - lo < 1e-5, 0.0, (features - lo) / np.where(hi - lo < 1e-5, 1.0, hi - lo))
    t = np.where(features <= lo, 0.0, np.where(features >= hi, 1.0, t))
    vertex = np.empty((n, 4), dtype=np.uint32)
    vertex[:, 0] = _pack_111011(t[:, 0:3])
    vertex[:, 2] = _pack_111011(t[:, 3:6])
    colour = [_unorm(t[:, 6 + i], 8) for i in range(3)] + [_unorm(_sigmoid(a["opacity"]), 8)]
    vertex[:, 3] = colour[0] << 24 | colour[1] << 16 | colour[2] << 8 | colour[3]
    vertex[:, 1] = _smallest_three_ply(_unit_quats(a["quats"]))
    k = a["shN"].shape[1]
    rest = a["shN"].transpose(0, 2, 1).reshape(n, 3 * k)  # channel-major, as f_rest_*
    sh = np.clip(np.trunc((rest / 8.0 + 0.5) * 256.0), 0, 255).astype(np.uint8)
    own = np.unique(chunk[rows % CHUNK == 0])
    records = np.zeros((len(own), 18), dtype=np.float32)
    for i, c in enumerate(own.tolist()):
        b = bounds[c].astype(np.float32)
        scale_lo, scale_hi = (
            np.clip(b[0, 3:6], -SCALE_LIMIT, SCALE_LIMIT),
            np.clip(b[1, 3:6], -SCALE_LIMIT, SCALE_LIMIT),
        )
        records[i] = np.concatenate([b[0, 0:3], b[1, 0:3], scale_lo, scale_hi, b[0, 6:9], b[1, 6:9]])
    return own, records, vertex, sh


def _unorm(t: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    return np.clip(np.floor(t * top + 0.5), 0, top).astype(np.uint32)


def _pack_111011(t: np.ndarray) -> np.ndarray:
    return _unorm(t[:, 0], 11) << 21 | _unorm(t[:, 1], 10) << 11 | _unorm(t[:, 2], 11)


def _smallest_three_ply(q: np.ndarray) -> np.ndarray:
    """PlayCanvas rotations, uint32 [N]: :func:`_pack_smallest_three` of (rot_0..rot_3) with each kept component
    as the 10-bit unorm of ``q * sqrt(2) / 2 + 0.5``."""
    return _pack_smallest_three(q, lambda v: _unorm(v * _SQRT1_2 + 0.5, 10)).astype(np.uint32)


def read_compressed_ply(path: str | Path) -> Gaussians:
    """A compressed PLY (SuperSplat / PlayCanvas layout) as Gaussians."""
    from grendel_py.data.points import read_ply_data

    ply = read_ply_data(path)
    names = [el.name for el in ply.elements]
    if names[:2] != ["chunk", "vertex"]:
        raise InputError(path, f"not a compressed PLY: elements {names}, expected chunk, vertex[, sh]")
    chunks = np.stack([np.asarray(ply["chunk"].data[p], dtype=np.float64) for p in _CHUNK_PROPS], axis=1)
    v = np.stack([np.asarray(ply["vertex"].data[p], dtype=np.uint64) for p in _VERTEX_PROPS], axis=1)
    n = len(v)
    if len(chunks) != -(-n // CHUNK):
        raise InputError(path, f"{len(chunks)} chunks for {n} Gaussians (expected {-(-n // CHUNK)})")
    c = chunks[np.arange(n) // CHUNK]
    lerp = lambda lo, hi, t: lo * (1.0 - t) + hi * t  # noqa: E731
    unpack = lambda w: np.stack([(w >> 21) / 2047.0, ((w >> 11) & 1023) / 1023.0, (w & 2047) / 2047.0], axis=1)  # noqa: E731
    means = lerp(c[:, 0:3], c[:, 3:6], unpack(v[:, 0]))
    log_scales = lerp(c[:, 6:9], c[:, 9:12], unpack(v[:, 2]))
    col = np.stack([((v[:, 3] >> s) & 255) / 255.0 for s in (24, 16, 8, 0)], axis=1)
    rgb = lerp(c[:, 12:15], c[:, 15:18], col[:, :3])
    q = _unpack_smallest_three(v[:, 1], lambda bits: (bits / 1023.0 - 0.5) / _SQRT1_2)
    if "sh" in names:
        props = [p.name for p in ply["sh"].properties]
        rest = np.stack([np.asarray(ply["sh"].data[p], dtype=np.float64) for p in props], axis=1)
        k = len(props) // 3
        shN = ((rest + 0.5) / 256.0 - 0.5) * 8.0
        shN = shN.reshape(n, 3, k).transpose(0, 2, 1)
    else:
        shN = np.zeros((n, 0, 3))
    return _model(means, log_scales, q, _logit(col[:, 3]), (rgb - 0.5) / C0, shN)


def read_model(path: str | Path) -> Gaussians:
    """A model file in any of :data:`FORMATS`, told apart by its name (``.splat``, ``.spz``) and, for PLY
    files, by its elements."""
    from grendel_py.model.ply import read_ply

    suffix = Path(path).suffix.lower()
    if suffix == ".splat":
        return read_splat(path)
    if suffix == ".spz":
        return read_spz(path)
    return read_compressed_ply(path) if _first_ply_element(path) == b"chunk" else read_ply(path)


def _first_ply_element(path: str | Path) -> bytes | None:
    """The name of the first element in the PLY header at ``path`` (None when it cannot be read: the reader
    then says why)."""
    try:
        with open(path, "rb") as f:
            header = f.read(1 << 16).split(b"end_header", 1)[0]
    except OSError:
        return None
    names = [line.split()[1] for line in header.splitlines() if line.startswith(b"element ") and len(line.split()) > 1]
    return names[0] if names else None
