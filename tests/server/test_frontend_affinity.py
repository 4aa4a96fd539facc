"""Media affinity across backends: requests about the same video go to one healthy backend
(rendezvous hashing of the video's content digest), fall back when it is down or full, and
requests without a video keep fewest-in-flight routing (fake backends)."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from frontend_fakes import (
    ServerThread,
    make_fake_backend,
    png_bytes,
    video_message,
    wait_for,
    write_mp4,
)

from earlytom_server.media import media_digest
from earlytom_server.proxy import rendezvous_score


@pytest.fixture
def backends() -> Iterator[list[ServerThread]]:
    servers = [ServerThread(make_fake_backend()).start() for _ in range(3)]
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    d = tmp_path_factory.mktemp("clips")
    return [write_mp4(d / f"clip{i}.mp4", frames=4 + i, size=(32 + 8 * i, 24)).read_bytes()
            for i in range(6)]


def data_url(clip: bytes) -> str:
    return "data:video/mp4;base64," + base64.b64encode(clip).decode()


def served_by(backends: list[ServerThread], before: list[int]) -> int:
    """Index of the one backend that received a request since ``before`` (its counts)."""
    grew = [i for i, b in enumerate(backends) if len(b.app.state.received) > before[i]]
    assert len(grew) == 1, grew
    return grew[0]


def counts(backends: list[ServerThread]) -> list[int]:
    return [len(b.app.state.received) for b in backends]


def ask(c: httpx.Client, clip: bytes, text: str = "What happens?", **extra: Any
        ) -> httpx.Response:
    r = c.post("/v1/chat/completions", json={
        "model": "fake-model", "messages": video_message(data_url(clip), text), **extra})
    assert r.status_code == 200, r.text
    return r


def expected(backends: list[ServerThread], clip: bytes, alive: set[int]) -> int:
    key = media_digest(clip)
    return max(alive, key=lambda i: rendezvous_score(key, backends[i].url))


def test_follow_ups_about_a_video_go_to_its_backend(make_front, backends, clips):
    front = make_front(backends=[b.url for b in backends])
    with httpx.Client(base_url=front.url, timeout=30) as c:
        for turn in range(3):
            for clip in clips:
                before = counts(backends)
                ask(c, clip, f"question {turn}")
                assert served_by(backends, before) == expected(backends, clip, {0, 1, 2})
        # a conversation: the video stays in the history, the follow-up goes where it was
        clip = clips[0]
        history = [*video_message(data_url(clip), "first question"),
                   {"role": "assistant", "content": "an answer"},
                   {"role": "user", "content": "and then?"}]
        before = counts(backends)
        assert c.post("/v1/chat/completions", json={
            "model": "fake-model", "messages": history}).status_code == 200
        assert served_by(backends, before) == expected(backends, clip, {0, 1, 2})
        text = c.get("/metrics").text
    assert 'earlytom_requests_routed_total{policy="affinity"} 19.0' in text


def test_a_backend_that_leaves_moves_only_its_own_videos(make_front, backends, clips):
    front = make_front(backends=[b.url for b in backends])
    home = {i: expected(backends, clip, {0, 1, 2}) for i, clip in enumerate(clips)}
    gone = home[0]
    backends[gone].app.state.healthy = False
    assert wait_for(lambda: not front.front.pool.backends[gone].healthy)
    alive = {0, 1, 2} - {gone}
    with httpx.Client(base_url=front.url, timeout=30) as c:
        for i, clip in enumerate(clips):
            before = counts(backends)
            ask(c, clip)
            got = served_by(backends, before)
            assert got == expected(backends, clip, alive)
            if home[i] != gone:
                assert got == home[i]  # stability: the other videos keep their backend
        backends[gone].app.state.healthy = True
        assert wait_for(lambda: front.front.pool.backends[gone].healthy)
        before = counts(backends)
        ask(c, clips[0])
        assert served_by(backends, before) == gone  # back home once healthy again


def test_a_full_backend_gives_way_to_the_least_loaded(make_front, backends, clips):
    front = make_front(backends=[b.url for b in backends], backend_max_in_flight=1)
    clip = clips[1]
    home = expected(backends, clip, {0, 1, 2})
    gate = backends[home].app.state.gate
    with httpx.Client(base_url=front.url, timeout=30) as c:
        held = threading.Thread(target=lambda: ask(c, clip, "[gate] hold it", stream=True))
        held.start()
        try:
            assert wait_for(lambda: gate.waiting == 1)
            before = counts(backends)
            ask(c, clip, "meanwhile")
            other = served_by(backends, before)
            assert other != home
        finally:
            gate.open()
            held.join(timeout=30)
        before = counts(backends)
        ask(c, clip, "after")
        assert served_by(backends, before) == home
        text = c.get("/metrics").text
    assert 'earlytom_requests_routed_total{policy="affinity_overflow"} 1.0' in text


def test_requests_without_video_keep_fewest_in_flight(make_front, backends):
    front = make_front(backends=[b.url for b in backends])
    gate = backends[0].app.state.gate
    with httpx.Client(base_url=front.url, timeout=30) as c:
        held = threading.Thread(target=lambda: c.post("/v1/chat/completions", json={
            "model": "fake-model", "stream": True,
            "messages": [{"role": "user", "content": "[gate]"}]}))
        # route the held stream to backend 0 by taking the others down for a moment
        for b in backends[1:]:
            b.app.state.healthy = False
        assert wait_for(lambda: [b.healthy for b in front.front.pool.backends]
                        == [True, False, False])
        held.start()
        try:
            assert wait_for(lambda: gate.waiting == 1)
            for b in backends[1:]:
                b.app.state.healthy = True
            assert wait_for(lambda: all(b.healthy for b in front.front.pool.backends))
            before = counts(backends)
            for _ in range(4):
                assert c.post("/v1/chat/completions", json={
                    "model": "fake-model",
                    "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
            after = counts(backends)
            assert after[0] == before[0]  # the busy one gets none
            assert after[1] > before[1] and after[2] > before[2]  # the idle ones share
        finally:
            gate.open()
            held.join(timeout=30)


def test_rendezvous_spreads_and_is_stable():
    urls = [f"http://10.0.0.{i}:8000" for i in range(4)]
    keys = [media_digest(str(i).encode()) for i in range(400)]

    def owner(key: str, pool: list[str]) -> str:
        return max(pool, key=lambda u: rendezvous_score(key, u))

    owners = {k: owner(k, urls) for k in keys}
    share = [sum(1 for o in owners.values() if o == u) for u in urls]
    assert min(share) > 60  # roughly even (100 each)
    left = [u for u in urls if u != urls[2]]
    for k in keys:
        if owners[k] != urls[2]:
            assert owner(k, left) == owners[k]


def test_frames_as_video_requests_have_affinity_too(make_front, backends):
    front = make_front(backends=[b.url for b in backends], frames_as_video=True)
    frames = [png_bytes((i * 40, 5, 5)) for i in range(4)]
    content = [{"type": "image_url",
                "image_url": {"url": "data:image/png;base64," + base64.b64encode(f).decode()}}
               for f in frames]
    with httpx.Client(base_url=front.url, timeout=30) as c:
        first = None
        for text in ("one", "two", "three"):
            before = counts(backends)
            r = c.post("/v1/chat/completions", json={"model": "fake-model", "messages": [
                {"role": "user", "content": [*content, {"type": "text", "text": text}]}]})
            assert r.status_code == 200, r.text
            got = served_by(backends, before)
            first = got if first is None else first
            assert got == first
