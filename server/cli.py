"""``earlytom-serve``: the front end, with its own vLLM backend or in front of existing ones.

    earlytom-serve                          # tiny local checkpoint, EarlyTom on, 127.0.0.1:8000
    earlytom-serve --model /path/to/llava-onevision-qwen2-7b-ov-hf --retain-ratio 0.15
    earlytom-serve --backend http://gpu1:8000 --backend http://gpu2:8000 --host 0.0.0.0

The flags are generated from ``Settings`` (one per field, ``--help`` shows each one's environment
variable and default); flags win over the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from earlytom_server.settings import DEFAULT_HOME, Settings
from earlytom_vllm.config import METHODS

log = logging.getLogger("earlytom_server.cli")

EXAMPLE_VIDEO = "earlytom-example.mp4"


#: The first field of each section of ``Settings`` -> the --help group it opens.
SECTIONS = {
    "host": "listening",
    "api_key": "auth",
    "max_in_flight": "limits of a public endpoint",
    "backends": "backends",
    "model": "the spawned vLLM backend",
    "compression": "compression defaults (EarlyTomConfig; per request: \"earlytom\")",
    "num_frames": "media",
}

#: Shortcuts into ``compression`` (not settings of their own).
COMPRESSION_SHORTCUTS = ("retain_ratio", "method", "no_compression")


def env_name(name: str) -> str:
    return f"{Settings.model_config.get('env_prefix', '')}{name}".upper()


def flag_names(name: str, field: FieldInfo) -> list[str]:
    """The flags of a setting: ``--x-y`` for field ``x_y`` (or the field's ``flag``), then its
    ``aliases``."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    primary = str(extra.get("flag") or "--" + name.replace("_", "-"))
    return [primary, *(str(a) for a in extra.get("aliases", ()))]


def _default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        return "none" if not value else json.dumps(value)
    if field.default is None:
        return "unset"
    if isinstance(field.default, bool):
        return "on" if field.default else "off"
    return str(field.default)


class _Negate(argparse.Action):
    """``--quiet-backend``-style alias: stores False."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        kwargs.pop("type", None)
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None
                 ) -> None:
        setattr(namespace, self.dest, False)


def build_parser() -> argparse.ArgumentParser:
    """One flag per ``Settings`` field, generated (help = the field's docstring, its environment
    variable and default), plus the compression shortcuts."""
    p = argparse.ArgumentParser(
        prog="earlytom-serve",
        usage="earlytom-serve [options]   (earlytom-serve --help lists them all)",
        description="OpenAI-compatible front end for video LLMs with EarlyTom visual-token "
        "compression on vLLM. Without --backend it starts and supervises its own vLLM server. "
        "Every flag has an environment variable (shown in brackets); flags win.",
        argument_default=argparse.SUPPRESS,
    )
    group: Any = p
    for name, field in Settings.model_fields.items():
        if name in SECTIONS:
            group = p.add_argument_group(SECTIONS[name])
        flags = flag_names(name, field)
        help_text = " ".join((field.description or "").split()).replace("%", "%%")
        help_text += f" [{env_name(name)}; default: {_default_text(field)}]"
        kwargs: dict[str, Any] = {"dest": name, "help": help_text}
        annotation = field.annotation
        if annotation is bool:
            positive = [f for f in flags if not f.startswith(("--no-", "--quiet-"))]
            group.add_argument(*positive, action=argparse.BooleanOptionalAction, **kwargs)
            negatives = [f for f in flags if f.startswith("--quiet-")]
            if negatives:
                group.add_argument(*negatives, action=_Negate, dest=name,
                                   help=f"same as --no-{name.replace('_', '-')}")
            continue
        if get_origin(annotation) is list or (
                get_origin(annotation) is Annotated and get_origin(get_args(annotation)[0]) is list):
            kwargs["action"] = "append"
            kwargs["metavar"] = "VALUE"
        elif get_origin(annotation) is Literal:
            kwargs["choices"] = list(get_args(annotation))
        else:
            kwargs["metavar"] = name.upper()
        group.add_argument(*flags, **kwargs)
        if name == "compression":
            group.add_argument("--retain-ratio", type=float,
                               help="share of video tokens kept, in (0, 1] (compression field)")
            group.add_argument("--method", choices=list(METHODS),
                               help="compression method (compression field)")
            group.add_argument("--no-compression", action="store_true",
                               help="compression enabled = false")
    return p


def settings_from_args(argv: list[str] | None = None) -> Settings:
    args = vars(build_parser().parse_args(argv))
    compression: dict[str, Any] = {}
    if "compression" in args:
        text = args.pop("compression")
        try:
            compression.update(json.loads(text) if text.strip() else {})
        except ValueError as exc:
            raise ValueError(f"--compression must be a JSON object: {exc}") from None
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


def setup_logging(level: str) -> None:
    """Root logging with the request id on every line (``-`` outside a request)."""
    from earlytom_server.guard import RequestIdFilter

    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = settings_from_args(argv)
    except (ValidationError, ValueError) as exc:
        print(f"earlytom-serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    return serve(settings)


def serve(settings: Settings, app: Any = None) -> int:
    """Run the front end until it is stopped (SIGTERM: graceful drain, exit 0; SIGINT: 130).
    ``app``: one made by ``create_app(settings, ...)`` (tests); default: ``create_app(settings)``."""
    setup_logging(settings.log_level)
    from earlytom_server.serving import DrainingServer, listen_socket, tame_malloc, uvicorn_config

    tame_malloc()

    try:
        sock = listen_socket(settings.host, settings.port)
    except OSError as exc:
        print(f"earlytom-serve: cannot listen on {settings.host}:{settings.port}: {exc}",
              file=sys.stderr)
        return 1
    if settings.port == 0:
        settings.port = sock.getsockname()[1]

    from earlytom_server.app import create_app

    if app is None:
        app = create_app(settings)
    front = app.state.front
    server = DrainingServer(uvicorn_config(app, settings), front)
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
