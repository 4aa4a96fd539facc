"""Test videos the OpenCV writer cannot make: an mp4 whose edit list hides its first frames.

``with_edit_list(src, dst, skip)`` rewrites the (identity) edit list that OpenCV's mp4 writer
emits so that the presentation starts ``skip`` frames into the media: what a lossless
``ffmpeg -ss ... -c copy`` trim produces. The header still counts every frame
(``CAP_PROP_FRAME_COUNT``); only ``skip``-fewer frames are presentable, which vLLM 0.32's loader
detects with its end-of-stream seek.
"""

from __future__ import annotations

import struct
from pathlib import Path

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}


def _boxes(data: bytes | bytearray, start: int, end: int, out: dict[bytes, list[int]]) -> None:
    off = start
    while off + 8 <= end:
        size, kind = struct.unpack(">I4s", data[off:off + 8])
        if size < 8:
            raise ValueError(f"unsupported box size {size} at {off}")
        out.setdefault(kind, []).append(off)
        if kind in _CONTAINERS:
            _boxes(data, off + 8, off + size, out)
        off += size


def with_edit_list(src: Path, dst: Path, skip: int) -> Path:
    data = bytearray(src.read_bytes())
    found: dict[bytes, list[int]] = {}
    _boxes(data, 0, len(data), found)
    if len(found.get(b"trak", [])) != 1 or b"elst" not in found:
        raise ValueError("expected one track with an edit list (OpenCV's mp4v writer)")
    mvhd, mdhd, stts, elst = (found[k][0] for k in (b"mvhd", b"mdhd", b"stts", b"elst"))
    movie_scale = struct.unpack(">I", data[mvhd + 20:mvhd + 24])[0]  # version 0
    media_scale = struct.unpack(">I", data[mdhd + 20:mdhd + 24])[0]
    n_entries = struct.unpack(">I", data[stts + 12:stts + 16])[0]
    if n_entries != 1:
        raise ValueError("expected a constant frame rate (one stts entry)")
    count, delta = struct.unpack(">II", data[stts + 16:stts + 24])
    if not 0 < skip < count:
        raise ValueError(f"skip must be in 1..{count - 1}")
    if data[elst + 8] != 0 or struct.unpack(">I", data[elst + 12:elst + 16])[0] != 1:
        raise ValueError("expected a version-0 edit list with one entry")
    shown = (count - skip) * delta * movie_scale // media_scale
    data[elst + 16:elst + 24] = struct.pack(">Ii", shown, skip * delta)
    dst.write_bytes(bytes(data))
    return dst
