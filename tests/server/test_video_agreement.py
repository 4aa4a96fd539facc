"""What the front end accepts as a video, the engine can encode: ``server/video.py`` with each
release's rules (``server/vllm_rules.py``) against that release's own loader
(``VIDEO_LOADER_REGISTRY.load("opencv").load_bytes``, imported here, never by the front end; 0.33
and 0.34 as ``engine_releases.engine_of`` builds them from their sources) on the same bytes.

For every video of a fixed corpus (1 to 40 frames, sampled and not, an mp4 edit list, truncated,
cut, garbage) and for mutated mp4s drawn by hypothesis:

- where the front end forwards the bytes unchanged, the engine decodes exactly the frames the
  front end counted (same sampled indices, at least one);
- where the front end forwards a frame list instead (the 1-frame mp4), the engine reads NO frame
  of the original, and reads every frame of the frame list;
- where the front end refuses, it names the parameter.

Runs in the engine pass (``-m engine``): that process imports vLLM anyway.
"""

from __future__ import annotations

import pytest
from engine_releases import RELEASES, engine_of
from frontend_fakes import write_mp4
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mp4_edits import hide_leading_frames

from earlytom_server.media import MediaError, inspect_video_bytes
from earlytom_server.vllm_rules import rules_for

pytestmark = pytest.mark.engine

NUM_FRAMES = 8
LIMITS = {"num_frames": NUM_FRAMES, "max_frames": 10_000, "max_pixels": 4096 * 4096}


@pytest.fixture(scope="module", params=RELEASES)
def release(request):
    """The vLLM release both sides follow: the engine's code and the front end's rules."""
    with engine_of(request.param):
        yield request.param


@pytest.fixture(scope="module")
def vllm_loader(release):
    from vllm.multimodal.video import VIDEO_LOADER_REGISTRY

    return VIDEO_LOADER_REGISTRY.load("opencv")


@pytest.fixture(scope="module")
def jpeg_io():
    from vllm.multimodal.media.image import ImageMediaIO
    from vllm.multimodal.media.video import VideoMediaIO

    return VideoMediaIO(ImageMediaIO(), num_frames=NUM_FRAMES)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("agreement")
    out = {f"{n}-frame": write_mp4(d / f"f{n}.mp4", frames=n).read_bytes()
           for n in (1, 2, 3, 8, 9, 40)}
    out["edit-list"] = hide_leading_frames(write_mp4(d / "e.mp4", frames=20).read_bytes(), 6)
    good = out["8-frame"]
    out["truncated"] = good[: len(good) // 2]
    out["cut-tail"] = good[:-200]
    out["garbage"] = b"this is not a video at all" * 50
    return out


def engine_frames(loader, data: bytes) -> tuple[int, list[int]] | None:
    """(frames, sampled indices) the engine decodes, or None where it raises."""
    try:
        frames, meta = loader.load_bytes(data, num_frames=NUM_FRAMES)
    except Exception:
        return None
    return int(frames.shape[0]), list(meta["frames_indices"])


def check_agreement(loader, jpeg_io, data: bytes, release: str) -> str:
    try:
        frames, replacement = inspect_video_bytes(data, param="p", rules=rules_for(release),
                                                  **LIMITS)
    except MediaError as exc:
        assert exc.param == "p" and exc.status == 400
        return "refused"
    engine = engine_frames(loader, data)
    if replacement is None:
        assert engine is not None, "forwarded a video the engine cannot open"
        assert engine[0] == frames >= 1, (engine, frames)
        return "forwarded"
    assert engine is None or engine[0] == 0, "re-encoded a video the engine reads"
    payload = replacement.split(",", 1)[1]
    media = jpeg_io.load_base64("video/jpeg", payload).media
    assert media[0].shape[0] == frames >= 1
    return "re-encoded"


def test_corpus_agrees_with_the_engine(release, vllm_loader, jpeg_io, corpus):
    outcome = {name: check_agreement(vllm_loader, jpeg_io, data, release)
               for name, data in corpus.items()}
    # 0.32 reads no frame of a 1-frame mp4 (its count seeks the reading capture); 0.33 counts on
    # a capture of its own and reads it
    assert outcome == {
        "1-frame": "re-encoded" if release == "0.32" else "forwarded", "2-frame": "forwarded", "3-frame": "forwarded",
        "8-frame": "forwarded", "9-frame": "forwarded", "40-frame": "forwarded",
        "edit-list": "forwarded", "truncated": "refused", "cut-tail": "refused",
        "garbage": "refused",
    }


def test_edit_list_count_is_the_engines(release, vllm_loader, corpus):
    """The header says 20 frames, 14 are presentable: both sample over 14."""
    frames, _ = inspect_video_bytes(corpus["edit-list"], param="p", rules=rules_for(release),
                                    **LIMITS)
    assert engine_frames(vllm_loader, corpus["edit-list"]) == (8, [0, 1, 3, 5, 7, 9, 11, 13])
    assert frames == 8


@st.composite
def mutated_mp4(draw, base: dict[str, bytes]) -> bytes:
    data = bytearray(base[draw(st.sampled_from(sorted(base)))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "zero"]))
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[at:]
            if not data:
                data = bytearray(b"\0")
        else:
            data[at:at + 16] = bytes(min(16, len(data) - at))
    return bytes(data)


def test_mutated_videos_agree_with_the_engine(release, vllm_loader, jpeg_io, tmp_path_factory):
    d = tmp_path_factory.mktemp("mutations")
    base = {n: write_mp4(d / f"m{n}.mp4", frames=n).read_bytes() for n in (1, 4, 12)}
    seen: dict[str, int] = {}

    @settings(max_examples=60, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(mutated_mp4(base))
    def check(data: bytes) -> None:
        result = check_agreement(vllm_loader, jpeg_io, data, release)
        seen[result] = seen.get(result, 0) + 1

    check()
    assert seen.get("forwarded") and seen.get("refused"), seen
