"""The front end validates a request's ``earlytom`` settings as the engine serving it would: with
the served checkpoint's family defaults and encoder (its ``config.json``, found through the
``root`` vLLM names in ``/v1/models``), so what the engine would refuse is refused with the same
400 before the request reaches vLLM. Where the config cannot be read (a backend on another host),
the engine checks alone, as before."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from frontend_fakes import ServerThread, make_fake_backend, wait_for

from earlytom_server.schemas import EARLYTOM_SCHEMA
from earlytom_vllm.config import REQUEST_KEYS

CHAT = "/v1/chat/completions"
LLAVA = {"architectures": ["LlavaOnevisionForConditionalGeneration"],
         "model_type": "llava_onevision", "vision_feature_layer": -1,
         "vision_config": {"num_hidden_layers": 26}}
QWEN = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "vision_config": {"depth": 32, "fullatt_block_indexes": [7, 15, 23, 31]}}


@pytest.fixture
def serve(tmp_path: Path, make_front: Callable[..., ServerThread]
          ) -> Iterator[Callable[[dict | None], tuple[httpx.Client, ServerThread]]]:
    """``serve(config)``: a front end on a fake backend whose checkpoint has ``config``."""
    started: list[ServerThread] = []
    clients: list[httpx.Client] = []

    def start(config: dict | None) -> tuple[httpx.Client, ServerThread]:
        root = None
        if config is not None:
            root = tmp_path / config["model_type"]
            root.mkdir()
            (root / "config.json").write_text(json.dumps(config))
        backend = ServerThread(make_fake_backend(root=str(root) if root else None)).start()
        started.append(backend)
        front = make_front(backends=[backend.url])
        client = httpx.Client(base_url=front.url, timeout=30)
        clients.append(client)
        assert wait_for(lambda: client.get("/health").status_code == 200)
        return client, backend

    yield start
    for client in clients:
        client.close()
    for backend in started:
        backend.stop()


def chat(client: httpx.Client, **earlytom) -> httpx.Response:
    return client.post(CHAT, json={"messages": [{"role": "user", "content": "hi"}],
                                   "earlytom": earlytom})


@pytest.mark.parametrize(("config", "refused", "accepted"), [
    (LLAVA, [26], [3, 25]),  # 26 encoder layers: 0..25
    (QWEN, [3, 5], [3, 7]),  # the last prune layer must be a full-attention block
    (QWEN, [32], [31]),
])
def test_what_the_engine_would_refuse_is_refused_before_it(serve, config, refused, accepted):
    client, backend = serve(config)
    r = chat(client, prune_layers=refused)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "earlytom.prune_layers" and "prune_layers" in err["message"]
    assert backend.app.state.received == []  # never reached the backend
    assert chat(client, prune_layers=accepted).status_code == 200
    assert len(backend.app.state.received) == 1


def test_the_field_is_named_as_the_client_sent_it(serve):
    client, _ = serve(LLAVA)
    r = client.post(CHAT, json={"messages": [{"role": "user", "content": "hi"}],
                                "mm_processor_kwargs": {"earlytom": {"prune_layers": [40]}}})
    assert r.json()["error"]["param"] == "mm_processor_kwargs.earlytom.prune_layers"


def test_the_family_defaults_are_the_engines(serve):
    """A Qwen2.5-VL request that sets no prune layers is checked with Qwen's (7, 15, 23), which
    the model accepts, and other settings are merged over them."""
    client, backend = serve(QWEN)
    assert chat(client, retain_ratio=0.2, tau=0.4).status_code == 200
    sent = backend.app.state.received[-1]["mm_processor_kwargs"]["earlytom"]
    assert sent == {"retain_ratio": 0.2, "tau": 0.4}


def test_without_a_readable_config_the_engine_checks_alone(serve):
    client, backend = serve(None)
    assert chat(client, prune_layers=[99]).status_code == 200  # the engine would judge it
    assert backend.app.state.received[-1]["mm_processor_kwargs"]["earlytom"] == {
        "prune_layers": [99]}


def test_the_published_settings_are_the_request_keys():
    assert set(EARLYTOM_SCHEMA["properties"]) == {*REQUEST_KEYS, "frames_as_video"}
