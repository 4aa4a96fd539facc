"""Edit an mp4 in place of ffmpeg (not installed here): give a video an edit list that hides its
first frames, as a lossless ``ffmpeg -ss ... -c copy`` trim does. OpenCV's frame count still
counts every sample; vLLM 0.32's loader corrects it (``get_video_metadata``), so such a file tells
whether a component counts frames the way the engine does."""

from __future__ import annotations

import struct


def _boxes(data, start, end):
    i = start
    while i < end:
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        if size < 8:
            raise ValueError("unsupported box size")
        yield i, size, kind.decode("latin-1")
        i += size


def _find(data, start, end, kind):
    for i, size, k in _boxes(data, start, end):
        if k == kind:
            return i, size
    raise ValueError(f"no {kind} box")


def hide_leading_frames(mp4: bytes, hide: int) -> bytes:
    """``mp4`` (as OpenCV's mp4v writer makes it: one video track with one edit) with its edit starting ``hide`` frames in, so only the later frames are presented."""
    data = bytearray(mp4)
    moov, moov_size = _find(data, 0, len(data), "moov")
    mvhd, _ = _find(data, moov + 8, moov + moov_size, "mvhd")
    movie_scale = struct.unpack(">I", data[mvhd + 20:mvhd + 24])[0]
    trak, trak_size = _find(data, moov + 8, moov + moov_size, "trak")
    mdia, mdia_size = _find(data, trak + 8, trak + trak_size, "mdia")
    mdhd, _ = _find(data, mdia + 8, mdia + mdia_size, "mdhd")
    media_scale, media_duration = struct.unpack(">II", data[mdhd + 20:mdhd + 28])
    minf, minf_size = _find(data, mdia + 8, mdia + mdia_size, "minf")
    stbl, stbl_size = _find(data, minf + 8, minf + minf_size, "stbl")
    stts, _ = _find(data, stbl + 8, stbl + stbl_size, "stts")
    _, delta = struct.unpack(">II", data[stts + 16:stts + 24])  # (first run's count, its delta)
    media_time = hide * delta
    segment = (media_duration - media_time) * movie_scale // media_scale
    edts, edts_size = _find(data, trak + 8, trak + trak_size, "edts")
    elst, _ = _find(data, edts + 8, edts + edts_size, "elst")
    entries = struct.unpack(">I", data[elst + 12:elst + 16])[0]
    if entries != 1 or data[elst + 8] != 0:
        raise ValueError("expected one version-0 edit")
    data[elst + 16:elst + 24] = struct.pack(">II", segment, media_time)
    return bytes(data)
