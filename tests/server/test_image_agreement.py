"""An image is the same picture to the front end and to the engine it fronts: ``decode_image`` with
each release's rules (``server/vllm_rules.py``) against that release's ``ImageMediaIO.load_bytes``
(the installed 0.32; 0.33/0.34 as ``engine_releases.engine_of`` builds them from their sources),
pixel for pixel, over every PNG colour/transparency kind. The front end re-encodes images as
video frames, so a colour it gets wrong is a colour the model sees wrong.

Also shows that the rules matter: the other release's rules disagree with each engine.

Runs in the engine pass (``-m engine``): that process imports vLLM anyway.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from engine_releases import RELEASES, engine_of
from frontend_fakes import write_mp4
from PIL import Image

from earlytom_server.media import decode_image, inspect_video_bytes
from earlytom_server.vllm_rules import RULES_032, RULES_033, rules_for

pytestmark = pytest.mark.engine


def _png(img: Image.Image, **params) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG", **params)
    return out.getvalue()


def _corpus() -> dict[str, bytes]:
    """One PNG per way vLLM's conversion can go; the transparent colour is the one painted."""
    rgb = Image.new("RGB", (6, 4), (10, 200, 30))
    rgb.putpixel((0, 0), (1, 2, 3))
    grey = Image.new("L", (6, 4), 77)
    grey.putpixel((0, 0), 5)
    rgba = Image.new("RGBA", (6, 4), (10, 200, 30, 255))
    rgba.putpixel((0, 0), (1, 2, 3, 0))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    return {
        "rgb": _png(rgb),
        "rgb-trns": _png(rgb, transparency=(1, 2, 3)),  # RGB with a tRNS chunk
        "grey": _png(grey),
        "grey-trns": _png(grey, transparency=5),
        "rgba": _png(rgba),
        "la": _png(rgba.convert("LA")),
        "palette": _png(palette),
        "palette-trns": _png(palette, transparency=palette.getpixel((0, 0))),
    }


CORPUS = _corpus()


@pytest.fixture(scope="module", params=RELEASES)
def release(request):
    with engine_of(request.param):
        yield request.param


def _engine(data: bytes) -> np.ndarray:
    from vllm.multimodal.media.image import ImageMediaIO

    image = ImageMediaIO().load_bytes(data).media
    assert image.mode == "RGB"
    return np.asarray(image)


def _front(data: bytes, rules) -> np.ndarray:
    image = decode_image(data, param="p", rules=rules)
    assert image.mode == "RGB"
    return np.asarray(image)


def test_images_agree_with_the_engine(release):
    rules = rules_for(release)
    for name, data in CORPUS.items():
        assert np.array_equal(_front(data, rules), _engine(data)), name


def test_only_the_release_rules_agree(release):
    """0.32 keeps an RGB PNG's tRNS colour, 0.33/0.34 put it on white: the other rules disagree
    with this engine on that image (and the first pixel, the transparent one, is what differs)."""
    other = RULES_033 if rules_for(release) is RULES_032 else RULES_032
    data = CORPUS["rgb-trns"]
    engine = _engine(data)
    wrong = _front(data, other)
    assert not np.array_equal(wrong, engine)
    assert np.argwhere((wrong != engine).any(axis=2)).tolist() == [[0, 0]]
    assert engine[0, 0].tolist() == ([1, 2, 3] if release == "0.32" else [255, 255, 255])


def test_one_frame_mp4_needs_the_release_frame_rules(release, tmp_path):
    """The frame-count rule the other way: 0.32's engine reads no frame of a 1-frame mp4 (the
    front end re-encodes it), 0.33/0.34's read it (the front end forwards it as it is)."""
    from vllm.multimodal.video import VIDEO_LOADER_REGISTRY

    data = write_mp4(tmp_path / "one.mp4", frames=1).read_bytes()
    frames, _ = VIDEO_LOADER_REGISTRY.load("opencv").load_bytes(data, num_frames=8)
    limits = {"num_frames": 8, "max_frames": 100, "param": "p"}
    count, replacement = inspect_video_bytes(data, rules=rules_for(release), **limits)
    assert count == 1
    assert frames.shape[0] == (0 if release == "0.32" else 1)
    assert (replacement is not None) is (release == "0.32")
    other = RULES_033 if rules_for(release) is RULES_032 else RULES_032
    replaced = inspect_video_bytes(data, rules=other, **limits)[1] is not None
    assert replaced is (release != "0.32")  # the other rules would act for the other engine
