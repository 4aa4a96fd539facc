"""Request preparation: what the front end does to a body between reading it and sending it.

- the body, read within the size and time limits and parsed strictly (:func:`parse_json_body`:
  no NaN, no nesting bombs; ``2.0`` is the integer 2), its validation errors as one OpenAI 400
  naming the parameter (:func:`validation_error`);
- the ``earlytom`` settings, validated by the engine's own ``config.request_config`` and sent on in
  one canonical form (:func:`canonical_earlytom`);
- every media part checked and rewritten by the media processor (``media.py``), image parts turned
  into one video with frames-as-video (:meth:`Preparer.prepare`);
- the upstream body, encoded once (:func:`encode_upstream`), with what the relay needs to know
  (:class:`Upstream`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request

from earlytom_server.errors import APIError
from earlytom_server.media import MediaError, MediaProcessor, PreparedVideo
from earlytom_server.schemas import ChatCompletionRequest
from earlytom_server.settings import Settings
from earlytom_server.supervisor import checkpoint_config
from earlytom_vllm import EarlyTomConfig
from earlytom_vllm.config import EarlyTomConfigError, request_config

if TYPE_CHECKING:
    from earlytom_vllm.families import Family

#: Deepest nesting of objects/arrays a request body may have (vLLM's own requests nest < 10).
MAX_JSON_DEPTH = 64
#: Most JSON objects, arrays and items (commas) a request body may have. A base64 video is one
#: string, so this only bounds bodies built to blow up when parsed (``[{},{},...]`` turns 100 MiB
#: into ~2 GiB of Python objects); counted only for bodies that could exceed it.
MAX_JSON_ITEMS = 200_000


def _clean_loc(loc: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for item in loc:
        if isinstance(item, str) and ("[" in item or item.startswith("constrained-") or item in {
                "str", "int", "float", "bool", "list", "dict", "none"}):
            continue  # union-branch labels
        if out and isinstance(item, str) and out[-1] == item:
            continue  # discriminator tag followed by the field of the same name
        out.append(item)
    return out


def loc_to_param(loc: Sequence[Any]) -> str | None:
    param = ""
    for item in loc:
        if isinstance(item, int):
            param += f"[{item}]"
        else:
            param += ("." if param else "") + str(item)
    return param or None


def validation_error(errors: Sequence[dict[str, Any]], *, drop_prefix: int = 0) -> APIError:
    if not errors:
        return APIError(400, "invalid request", code="invalid_request")
    cleaned = [(_clean_loc(list(e.get("loc", ()))[drop_prefix:]), e) for e in errors]
    best = max(len(loc) for loc, _ in cleaned)
    top = [(loc, e) for loc, e in cleaned if len(loc) == best]
    loc = top[0][0]
    param = loc_to_param(loc)
    msgs = list(dict.fromkeys(str(e.get("msg", "invalid value")) for _, e in top))
    msg = msgs[0] if len(msgs) == 1 else "invalid value (" + "; or ".join(msgs) + ")"
    return APIError(400, f"{param}: {msg}" if param else msg, param=param,
                    code="invalid_value")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def _json_number(text: str) -> float | int:
    """A JSON number with a fraction or exponent. JSON has one number type: ``2.0`` is the
    integer 2 (as JSON Schema's ``integer`` says), so an integral value is an int here and
    integer fields accept it, as vLLM's do."""
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {text[:40]} is out of range")
    return int(value) if value.is_integer() else value


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """True if ``value`` nests objects/arrays deeper than ``limit`` (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, (dict, list)))
    return False


def parse_json_body(raw: bytes | bytearray) -> dict[str, Any]:
    """The request body as a JSON object, or an APIError naming what is wrong with it. Refuses
    what a standard JSON parser accepts but the rest of the path cannot carry: NaN/Infinity,
    numbers that overflow a double, nesting deeper than MAX_JSON_DEPTH, more than MAX_JSON_ITEMS
    containers/items."""
    if not raw.strip():
        raise APIError(400, "empty request body: a JSON object is expected",
                       code="invalid_json")
    if len(raw) > MAX_JSON_ITEMS and (
            raw.count(b"{") + raw.count(b"[") + raw.count(b",")) > MAX_JSON_ITEMS:
        raise APIError(400, f"the request body has more than {MAX_JSON_ITEMS} JSON objects, "
                       "arrays or items", code="invalid_json")
    try:
        body = json.loads(raw, parse_constant=_refuse_constant, parse_float=_json_number)
    except RecursionError:
        raise APIError(400, f"the request body nests objects/arrays deeper than "
                       f"{MAX_JSON_DEPTH} levels", code="invalid_json") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limit, ...
        raise APIError(400, f"malformed JSON in the request body: {exc}",
                       code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    if json_depth_exceeds(body, MAX_JSON_DEPTH):
        raise APIError(400, f"the request body nests objects/arrays deeper than "
                       f"{MAX_JSON_DEPTH} levels", code="invalid_json")
    return body


def first_lone_surrogate(value: Any, path: str = "") -> str | None:
    """The parameter path of the first string holding a lone UTF-16 surrogate (``"\\ud800"``
    parses, but cannot be encoded as UTF-8 to forward)."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return where or None
        elif isinstance(item, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
    return None


def encode_upstream(body: dict[str, Any]) -> bytes:
    """The body to forward, as UTF-8 JSON (one encode; the front end sends these bytes)."""
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        param = first_lone_surrogate(body)
        raise APIError(400, f"{param + ': ' if param else ''}the text contains a lone UTF-16 "
                       "surrogate (an unpaired \\ud800-\\udfff escape), which is not valid "
                       "Unicode", param=param, code="invalid_value") from None


def strip_client_uuids(messages: list[dict[str, Any]]) -> int:
    """Remove client-supplied multimodal ``uuid``s from content parts, in place; how many.

    vLLM uses a part's ``uuid`` as the multimodal cache key when given (and then trusts it over
    the content), so a client that knows or guesses another client's uuid could plant or read
    that client's cached video features. Without it vLLM hashes the content itself."""
    removed = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and "uuid" in part:
                    del part["uuid"]
                    removed += 1
    return removed


def canonical_earlytom(overrides: dict[str, Any], cfg: EarlyTomConfig, defaults: EarlyTomConfig,
                       server_keys: Collection[str]) -> dict[str, Any]:
    """The request's ``earlytom`` settings in one canonical form, for ``mm_processor_kwargs``.

    vLLM's multimodal cache key hashes the request's ``mm_processor_kwargs`` as given (key order
    and number spelling included), so equal settings sent differently would never share cached
    video features. The form sent: the keys the request set, sorted, each with its *effective*
    value (``request_config`` already validated and normalised it: ``1`` -> ``1.0``, a list of
    layers), minus the keys whose value equals the server-wide setting. Only keys configured
    server-wide (``server_keys``: ``--compression`` and its shortcuts, which the backends run) are
    dropped when equal: for the others the engine's family defaults may differ from the front
    end's (Qwen2.5-VL prunes after other layers), so they are kept."""
    effective = cfg.to_dict()
    server = defaults.to_dict()
    return {key: effective[key] for key in sorted(overrides)
            if not (key in server_keys and effective[key] == server[key])}


def ask_for_usage(body: dict[str, Any], upstream: dict[str, Any], *, stream: bool) -> bool:
    """Make a streamed request ask the backend for usage (the front end counts tokens from it);
    True when the client did not ask for it (the relay then drops the usage-only chunk)."""
    if not stream:
        return False
    client_opts = body.get("stream_options") or {}
    upstream["stream_options"] = {**client_opts, "include_usage": True}
    return not client_opts.get("include_usage")


@dataclass
class Upstream:
    """What is sent to the backend: the encoded body, and how to route and relay it."""

    content: bytes
    strip_usage: bool = False
    key: str | None = None  # media affinity key (see proxy.py)



@dataclass
class Prepared:
    body: dict[str, Any]
    frames: list[int] = field(default_factory=list)  # frames of each checked video
    images: int = 0  # image parts forwarded as images
    media_keys: list[str] = field(default_factory=list)  # content digest of each video



@dataclass(frozen=True)
class ServedModel:
    """A served checkpoint's family (``earlytom_vllm.families``), its ``config.json`` and the
    server-wide settings the engine serves it with."""

    family: Family
    config: dict[str, Any]
    defaults: EarlyTomConfig


def served_model(root: str, overrides: Mapping[str, Any]) -> ServedModel | None:
    """The family of checkpoint ``root`` (vLLM's ``root`` of a served model: a path, or a hub
    name in the local cache) and its defaults with the server-wide ``overrides`` (the
    ``--hf-overrides`` earlytom object). None when its config cannot be read here (a backend on
    another host) or names no family: the engine then checks the settings alone."""
    from earlytom_vllm.families import family_for_config

    config = checkpoint_config(root)
    family = family_for_config(config) if config else None
    if family is None:
        return None
    try:
        return ServedModel(family, config, family.server_defaults(config, overrides))
    except (EarlyTomConfigError, ValueError, KeyError, TypeError):  # the engine refuses to
        return None  # start with these settings or this config, and says why


class Preparer:
    """Reads, checks and rewrites request bodies (the body limits, the ``earlytom`` settings,
    the media parts) for the front end's routes."""

    def __init__(self, settings: Settings, media: MediaProcessor) -> None:
        self.settings = settings
        self.media = media
        self.default_cfg = settings.earlytom_config
        self._served: dict[str, ServedModel | None] = {}  # per checkpoint root

    def declared_length(self, request: Request) -> int | None:
        """The request's Content-Length (413 beyond the body limit; 400 if not a number)."""
        declared = request.headers.get("content-length")
        if declared is None:
            return None
        if not declared.isascii() or not declared.strip().isdigit():
            raise APIError(400, "invalid Content-Length header", code="invalid_request",
                           headers={"connection": "close"})
        length = int(declared)
        limit = self.settings.request_body_limit
        if length > limit:
            raise APIError(413, f"request body larger than {limit} bytes",
                           code="request_too_large", headers={"connection": "close"})
        return length

    async def read_json(self, request: Request, *, declared: int | None,
                        deadline: float | None = None) -> dict[str, Any]:
        """Read the body (within the body limit, ``body_timeout`` and what is left of the
        request's time cap) and parse it."""
        limit = self.settings.request_body_limit

        async def read() -> bytearray:
            # one buffer, sized up front when the length is declared (no regrowth copies)
            buf = bytearray(declared) if declared else bytearray()
            size = 0
            async for chunk in request.stream():
                end = size + len(chunk)
                if end > limit:
                    raise APIError(413, f"request body larger than {limit} bytes",
                                   code="request_too_large", headers={"connection": "close"})
                if end <= len(buf):
                    buf[size:end] = chunk
                else:
                    del buf[size:]
                    buf += chunk
                size = end
            del buf[size:]
            return buf

        timeout = self.settings.body_timeout
        if deadline is not None:
            timeout = max(0.0, min(timeout, deadline - time.monotonic()))
        try:
            raw = await asyncio.wait_for(read(), timeout)
        except asyncio.TimeoutError:
            raise APIError(408, f"the request body did not arrive within {timeout:g} s",
                           code="request_timeout", headers={"connection": "close"}) from None
        return parse_json_body(raw)

    def served(self, card: Mapping[str, Any] | None) -> ServedModel | None:
        """What is known here of the model a backend serves as ``card`` (its ``/v1/models``
        entry), read once per checkpoint (see :func:`served_model`)."""
        root = card.get("root") if card is not None else None
        if not isinstance(root, str) or not root or not self.settings.earlytom_arch:
            return None
        if root not in self._served:
            self._served[root] = served_model(
                root, {"max_frames": self.settings.num_frames, **self.settings.compression})
        return self._served[root]

    def parse_earlytom(self, req: ChatCompletionRequest, body: dict[str, Any],
                       card: Mapping[str, Any] | None = None
                       ) -> tuple[dict[str, Any], bool, EarlyTomConfig]:
        """(overrides to forward, frames_as_video, effective config). ``card``: the served
        model's ``/v1/models`` entry: where its family is known, the settings are validated as
        the engine validates them (its defaults, its encoder), else against the server's."""
        overrides: dict[str, Any] = {}
        inner: Any = None
        mm = body.get("mm_processor_kwargs")
        if mm is not None:
            for key in mm:
                if key != "earlytom":
                    raise APIError(400, f"mm_processor_kwargs.{key} is not accepted (only "
                                   "'earlytom')", param=f"mm_processor_kwargs.{key}",
                                   code="invalid_value")
            inner = mm.get("earlytom")
            if inner is not None and not isinstance(inner, dict):
                raise APIError(400, "mm_processor_kwargs.earlytom must be an object",
                               param="mm_processor_kwargs.earlytom", code="invalid_value")
            overrides.update(inner or {})
        overrides.update(req.earlytom or {})
        frames_as_video = overrides.pop("frames_as_video", self.settings.frames_as_video)
        if not isinstance(frames_as_video, bool):
            raise APIError(400, f"earlytom.frames_as_video must be true or false, got "
                           f"{frames_as_video!r}", param="earlytom.frames_as_video",
                           code="invalid_value")
        served = self.served(card)
        try:  # the engine's processor validates with the same function
            cfg = (request_config(self.default_cfg, overrides) if served is None else
                   served.family.request_config(served.defaults, overrides, served.config))
        except EarlyTomConfigError as exc:
            # named as the client sent it: top-level earlytom wins over mm_processor_kwargs'
            key = exc.field.split(".")[1] if exc.field.startswith("earlytom.") else None
            where = "mm_processor_kwargs." if key is not None and key in (inner or {}) and \
                key not in (req.earlytom or {}) else ""
            raise APIError(400, f"invalid earlytom setting: {where}{exc}",
                           param=where + exc.field, code="invalid_value") from None
        except (TypeError, ValueError, OverflowError) as exc:  # e.g. a number past float range
            raise APIError(400, f"invalid earlytom setting: {exc}", param="earlytom",
                           code="invalid_value") from None
        return overrides, frames_as_video, cfg

    async def prepare(self, body: dict[str, Any], *, frames_as_video: bool) -> Prepared:
        """Check and rewrite every media part; collect the videos' frame counts."""
        frames: list[int] = []
        keys: list[str] = []
        images = 0
        messages: list[dict[str, Any]] = []
        frame_slots: list[tuple[int, int, str, str]] = []  # (msg, part, url, param)
        try:
            for i, message in enumerate(body["messages"]):
                message = dict(message)
                content = message.get("content")
                if isinstance(content, list):
                    parts: list[Any] = []
                    for j, part in enumerate(content):
                        kind = part["type"]
                        if kind == "video_url":
                            param = f"messages[{i}].content[{j}].video_url.url"
                            video = await self.media.video(part["video_url"]["url"], param=param)
                            frames.append(video.frames)
                            keys.append(video.key)
                            parts.append({**part, "video_url": {**part["video_url"],
                                                                "url": video.url}})
                        elif kind == "image_url":
                            param = f"messages[{i}].content[{j}].image_url.url"
                            url = part["image_url"]["url"]
                            if frames_as_video:
                                frame_slots.append((i, len(parts), url, param))
                                parts.append(None)  # placeholder
                            else:
                                new = await self.media.image(url, param=param)
                                images += 1
                                parts.append({**part, "image_url": {**part["image_url"],
                                                                    "url": new}})
                        else:
                            parts.append(part)
                    message["content"] = parts
                messages.append(message)
            if frame_slots:
                video: PreparedVideo = await self.media.frames_as_video(
                    [(url, param) for _, _, url, param in frame_slots])
                frames.append(video.frames)
                keys.append(video.key)
                first_msg, first_part = frame_slots[0][:2]
                messages[first_msg]["content"][first_part] = {
                    "type": "video_url", "video_url": {"url": video.url}}
                for m in messages:
                    if isinstance(m.get("content"), list):
                        m["content"] = [p for p in m["content"] if p is not None]
                        if not m["content"]:
                            m["content"] = ""
        except MediaError as exc:
            # The traceback holds the frames that decoded the media (and the body): raised from
            # a worker thread it is also in a reference cycle through anyio's frames, which would
            # keep them until a full gc pass. Drop it: the error is the client's, not a bug.
            exc.__traceback__ = None
            raise APIError(exc.status, exc.message, param=exc.param, code=exc.code) from None
        return Prepared(body={**body, "messages": messages}, frames=frames, images=images,
                        media_keys=keys)

    def video_settings(self, upstream: dict[str, Any], prepared: Prepared,
                        overrides: dict[str, Any], cfg: EarlyTomConfig) -> str | None:
        """Finish a prepared messages body: client uuids out, the canonical ``earlytom``
        settings in (none for an image-only request: they would only split its images' cache
        entries; see canonical_earlytom); the media affinity key (the first video's)."""
        strip_client_uuids(upstream["messages"])
        earlytom = canonical_earlytom(overrides, cfg, self.default_cfg, self.settings.compression)
        if earlytom and (prepared.frames or not prepared.images):
            upstream["mm_processor_kwargs"] = {"earlytom": earlytom}
        # the conversation's first video decides the backend (its caches hold the video)
        return prepared.media_keys[0] if prepared.media_keys else None
