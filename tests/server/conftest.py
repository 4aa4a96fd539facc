"""Fixtures for the front-end tests: fake backends and front ends on random loopback ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from frontend_fakes import ServerThread, make_fake_backend, write_mp4

from earlytom_server.app import create_app
from earlytom_server.serving import uvicorn_config
from earlytom_server.settings import Settings


@pytest.fixture
def fake_backend() -> Iterator[ServerThread]:
    server = ServerThread(make_fake_backend()).start()
    yield server
    server.stop()


@pytest.fixture
def media_dir(tmp_path: Path) -> Path:
    d = tmp_path / "media"
    d.mkdir()
    return d


@pytest.fixture
def make_front(media_dir: Path) -> Iterator[Callable[..., ServerThread]]:
    """``make_front(backends=[url], **settings)`` -> a running front end (stopped at teardown)."""
    started: list[ServerThread] = []

    def make(**overrides: Any) -> ServerThread:
        kwargs: dict[str, Any] = {"health_interval": 0.2, "media_dir": media_dir,
                                  "download_timeout": 5.0}
        kwargs.update(overrides)
        settings = Settings(**kwargs)
        app = create_app(settings)
        # the protocol stack earlytom-serve runs (header limits and timeouts included)
        server = ServerThread(app, config=uvicorn_config(app, settings,
                                                         log_level="warning")).start()
        server.front = app.state.front  # type: ignore[attr-defined]
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def front(fake_backend: ServerThread, make_front: Callable[..., ServerThread]) -> ServerThread:
    return make_front(backends=[fake_backend.url])


@pytest.fixture
def client(front: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=front.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    good = write_mp4(d / "good.mp4", frames=8)
    long = write_mp4(d / "long.mp4", frames=40)
    data = good.read_bytes()
    truncated = d / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    cut_tail = d / "cut_tail.mp4"
    cut_tail.write_bytes(data[:-200])
    garbage = d / "garbage.mp4"
    garbage.write_bytes(b"this is not a video at all" * 50)
    return {"good": good, "long": long, "truncated": truncated, "cut_tail": cut_tail,
            "garbage": garbage}

