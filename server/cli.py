"""``earlytom-serve``: the front end, with its own vLLM backend or in front of existing ones.

    earlytom-serve                          # tiny local checkpoint, EarlyTom on, 127.0.0.1:8000
    earlytom-serve --model /path/to/llava-onevision-qwen2-7b-ov-hf --retain-ratio 0.15
    earlytom-serve --backend http://gpu1:8000 --backend http://gpu2:8000 --host 0.0.0.0

Every flag has an ``EARLYTOM_*`` environment variable (see ``--help``); flags win.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shlex
import socket
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from earlytom_server.settings import DEFAULT_HOME, Settings

log = logging.getLogger("earlytom_server.cli")

EXAMPLE_VIDEO = "earlytom-example.mp4"


def build_parser() -> argparse.ArgumentParser:
    S = argparse.SUPPRESS
    p = argparse.ArgumentParser(
        prog="earlytom-serve",
        description="OpenAI-compatible front end for LLaVA-OneVision with EarlyTom visual-token "
        "compression on vLLM. Without --backend it starts and supervises its own vLLM server.",
        argument_default=S,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("listening and auth")
    g.add_argument("--host", help="address to listen on [EARLYTOM_HOST, default 127.0.0.1]")
    g.add_argument("--port", type=int, help="port to listen on [EARLYTOM_PORT, default 8000]")
    g.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/* "
                   "[EARLYTOM_API_KEY]")
    g.add_argument("--protect-health-metrics", action="store_true",
                   help="also require the key on /health and /metrics "
                   "[EARLYTOM_PROTECT_HEALTH_METRICS]")
    g.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"],
                   help="[EARLYTOM_LOG_LEVEL, default info]")

    g = p.add_argument_group("backends")
    g.add_argument("--backend", dest="backends", action="append", metavar="URL",
                   help="proxy to this vLLM server (repeatable); none: start one "
                   "[EARLYTOM_BACKENDS, comma-separated]")
    g.add_argument("--backend-api-key", help="key sent to the backends [EARLYTOM_BACKEND_API_KEY]")
    g.add_argument("--health-interval", type=float, help="seconds between health checks "
                   "[EARLYTOM_HEALTH_INTERVAL, default 2]")
    g.add_argument("--request-timeout", type=float, help="seconds an upstream request may stay "
                   "silent [EARLYTOM_REQUEST_TIMEOUT, default 600]")

    g = p.add_argument_group("the spawned vLLM backend")
    g.add_argument("--model", help="checkpoint path or name; default: the tiny local checkpoint "
                   "[EARLYTOM_MODEL]")
    g.add_argument("--served-model-name", help="[EARLYTOM_SERVED_MODEL_NAME]")
    g.add_argument("--backend-port", type=int, help="private port (0: any free one) "
                   "[EARLYTOM_BACKEND_PORT]")
    g.add_argument("--max-model-len", type=int, help="[EARLYTOM_MAX_MODEL_LEN]")
    g.add_argument("--max-images-per-prompt", type=int,
                   help="images per prompt the backend accepts [EARLYTOM_MAX_IMAGES_PER_PROMPT, "
                   "default 1]")
    g.add_argument("--kv-cache-space", dest="kv_cache_space_gib", type=int,
                   help="GiB, VLLM_CPU_KVCACHE_SPACE on a CPU [EARLYTOM_KV_CACHE_SPACE_GIB, "
                   "default 1]")
    g.add_argument("--no-enforce-eager", dest="enforce_eager", action="store_false",
                   help="let vLLM compile (slower start) [EARLYTOM_ENFORCE_EAGER]")
    g.add_argument("--dtype", dest="dtype",
                   help="vLLM --dtype; auto = float32 without CUDA, the checkpoint's dtype on a "
                   "GPU [EARLYTOM_DTYPE, default auto]")
    g.add_argument("--no-earlytom-arch", dest="earlytom_arch", action="store_false",
                   help="serve the stock architecture (debugging only) [EARLYTOM_EARLYTOM_ARCH]")
    g.add_argument("--backend-arg", dest="backend_args", action="append", metavar="ARG",
                   help="extra vLLM argument (repeatable; shell-split) [EARLYTOM_BACKEND_ARGS]")
    g.add_argument("--startup-timeout", type=float, help="[EARLYTOM_STARTUP_TIMEOUT, default 900]")
    g.add_argument("--quiet-backend", dest="backend_log", action="store_false",
                   help="do not relay the backend's log [EARLYTOM_BACKEND_LOG]")

    g = p.add_argument_group("compression defaults (EarlyTomConfig; per request: \"earlytom\")")
    g.add_argument("--retain-ratio", type=float, help="share of video tokens kept, in (0, 1]")
    g.add_argument("--method", choices=["earlytom", "post_encoder", "evs", "none"])
    g.add_argument("--no-compression", action="store_true", help="enabled = false")
    g.add_argument("--compression", metavar="JSON", help="EarlyTomConfig fields as JSON "
                   "[EARLYTOM_COMPRESSION]")

    g = p.add_argument_group("media")
    g.add_argument("--num-frames", type=int, help="frames sampled per video "
                   "[EARLYTOM_NUM_FRAMES, default 32]")
    g.add_argument("--media-dir", type=Path, help="file:// URLs allowed only inside "
                   f"[EARLYTOM_MEDIA_DIR, default {DEFAULT_HOME / 'media'}]")
    g.add_argument("--backend-media-dir", type=Path, help="directory the backends read as "
                   "--allowed-local-media-path [EARLYTOM_BACKEND_MEDIA_DIR]")
    g.add_argument("--allow-private-urls", action="store_true",
                   help="fetch http(s) media from loopback/private/link-local addresses "
                   "[EARLYTOM_ALLOW_PRIVATE_URLS]")
    g.add_argument("--max-video-bytes", type=int, help="[EARLYTOM_MAX_VIDEO_BYTES, 100 MiB]")
    g.add_argument("--max-image-bytes", type=int, help="[EARLYTOM_MAX_IMAGE_BYTES, 20 MiB]")
    g.add_argument("--max-video-frames", type=int, help="[EARLYTOM_MAX_VIDEO_FRAMES, 10000]")
    g.add_argument("--download-timeout", type=float, help="[EARLYTOM_DOWNLOAD_TIMEOUT, 30 s]")
    g.add_argument("--frames-as-video", action="store_true",
                   help="treat each request's image_url parts as the frames of one video "
                   "(lmms-eval's openai_compatible model sends videos so); a request's "
                   "earlytom.frames_as_video overrides it [EARLYTOM_FRAMES_AS_VIDEO]")
    return p


def settings_from_args(argv: list[str] | None = None) -> Settings:
    args = vars(build_parser().parse_args(argv))
    compression: dict[str, Any] = {}
    if "compression" in args:
        compression.update(json.loads(args.pop("compression")))
    if "retain_ratio" in args:
        compression["retain_ratio"] = args.pop("retain_ratio")
    if "method" in args:
        compression["method"] = args.pop("method")
    if args.pop("no_compression", False):
        compression["enabled"] = False
    if "backend_args" in args:
        args["backend_args"] = [a for chunk in args["backend_args"] for a in shlex.split(chunk)]
    if compression:
        env = Settings().compression  # combine with EARLYTOM_COMPRESSION
        args["compression"] = {**env, **compression}
    return Settings(**args)


def write_example_video(path: Path, frames: int = 16) -> Path:
    """A small moving-square clip for the printed example (written once)."""
    if path.is_file():
        return path
    import cv2
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), 8, (160, 120))
    for i in range(frames):
        img = np.full((120, 160, 3), (40, 90, 160), np.uint8)
        x = 8 + i * 8
        cv2.rectangle(img, (x, 40), (x + 30, 70), (255, 255, 255), -1)
        writer.write(img)
    writer.release()
    tmp.replace(path)
    return path


def example_request(settings: Settings, model: str, video: Path | None) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    if ":" in host:
        host = f"[{host}]"
    base = f"http://{host}:{settings.port}"
    media_dir = settings.resolved_media_dir().resolve()
    if video is not None and video.resolve().is_relative_to(media_dir):
        url = f"file://{video.resolve()}"
        url_json = json.dumps(url)
    elif video is not None:
        url_json = f"\"data:video/mp4;base64,'\"$(base64 -w0 {shlex.quote(str(video))})\"'\""
    else:
        url_json = json.dumps("file:///path/inside/the/media/dir.mp4")
    body = (
        '{"model": ' + json.dumps(model) + ', "max_tokens": 32, '
        '"earlytom": {"retain_ratio": 0.15}, "messages": [{"role": "user", "content": ['
        '{"type": "video_url", "video_url": {"url": ' + url_json + '}}, '
        '{"type": "text", "text": "Describe this video."}]}]}'
    )
    auth = " -H \"Authorization: Bearer $EARLYTOM_API_KEY\"" if settings.api_key else ""
    return (f"curl -s {base}/v1/chat/completions -H 'Content-Type: application/json'{auth} "
            f"-d '{body}'")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    try:
        settings = settings_from_args(argv)
    except (ValidationError, ValueError) as exc:
        print(f"earlytom-serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)

    try:
        sock = _bind(settings.host, settings.port)
    except OSError as exc:
        print(f"earlytom-serve: cannot listen on {settings.host}:{settings.port}: {exc}",
              file=sys.stderr)
        return 1
    if settings.port == 0:
        settings.port = sock.getsockname()[1]

    import uvicorn

    from earlytom_server.app import create_app

    app = create_app(settings)
    front = app.state.front
    config = uvicorn.Config(app, log_level=settings.log_level, timeout_graceful_shutdown=5,
                            lifespan="on")
    server = uvicorn.Server(config)
    fatal: list[str] = []

    def on_fatal(message: str) -> None:
        fatal.append(message)
        server.should_exit = True

    if front.supervisor is not None:
        front.supervisor.on_fatal = on_fatal

    example_video: Path | None = None
    if settings.media_dir is None:
        with contextlib.suppress(Exception):
            example_video = write_example_video(settings.resolved_media_dir() / EXAMPLE_VIDEO)
    else:
        with contextlib.suppress(Exception):
            example_video = write_example_video(DEFAULT_HOME / "examples" / EXAMPLE_VIDEO)

    async def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.05)
        addr = f"http://{settings.host}:{settings.port}"
        if front.supervisor is not None:
            what = "the tiny local checkpoint" if settings.model is None else settings.model
            print(f"earlytom-serve: listening on {addr}; starting a vLLM backend for {what} "
                  f"on {front.supervisor.url} (private). /health answers 503 until it is "
                  "ready.", file=sys.stderr, flush=True)
        else:
            print(f"earlytom-serve: listening on {addr}; backends: "
                  f"{', '.join(settings.backends)}", file=sys.stderr, flush=True)
        await front.pool.wait_ready()
        model = str(front.pool.models()[0].get("id"))
        cfg = settings.earlytom_config
        state = (f"EarlyTom on (method {cfg.method}, retain_ratio {cfg.retain_ratio})"
                 if cfg.compresses else "compression off")
        print(f"\nearlytom-serve: READY at {addr} -- model {model!r}, {state}.\n"
              f"Try it:\n\n{example_request(settings, model, example_video)}\n",
              file=sys.stderr, flush=True)

    async def run() -> None:
        task = asyncio.create_task(announce())
        try:
            await server.serve(sockets=[sock])
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        return 130
    finally:
        sock.close()
    if fatal:
        print(f"earlytom-serve: giving up: {fatal[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
