"""The request fields the front end understands, plus the ``earlytom`` extension.

Only what the front end needs to look at is typed here (messages and their media parts, the
streaming switches, the usual sampling numbers so that wrong types fail fast with a clear
``param``). Every other top-level field passes through to vLLM unchanged, which validates it.

The ``earlytom`` extension (request body, next to ``messages``)::

    "earlytom": {"retain_ratio": 0.15}           # a per-request key (config.REQUEST_KEYS),
                                                 # validated here; server-wide ones are a 400
    "earlytom": {"enabled": false}               # this request uncompressed
    "earlytom": {"frames_as_video": true}        # the request's image_url parts are frames of ONE
                                                 # video (what lmms-eval's openai backend sends);
                                                 # default: the server's --frames-as-video

is forwarded to vLLM as ``mm_processor_kwargs: {"earlytom": {...}}`` (without ``frames_as_video``),
in one canonical form (sorted keys, effective values, server-wide settings omitted) so that equal
settings share vLLM's multimodal cache entries; an image-only request forwards none
(``prepare.canonical_earlytom``).

These models are also the published OpenAPI schema (``server/openapi.py``): what a field's schema
allows is what the front end accepts, and the rest is refused with a 400 naming the field. The
``earlytom`` object is validated by ``config.request_config`` (the engine's own check); its
published schema (:data:`EARLYTOM_SCHEMA`) states the same bounds. What a schema cannot say --
that a media URL's bytes decode as an image or a video, that ``prune_layers`` is sorted, which
tokens and lengths the served model has -- is checked by the front end or the engine, with a 400.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from earlytom_vllm.config import _MAX_INT, METHODS

#: A JSON number (an integer is one too), never a string or a boolean.
Number = Annotated[float, Field(strict=True)]
#: vLLM's bounds on ``seed`` (a 64-bit signed integer).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _anycase(word: str) -> str:
    """A regex matching ``word`` in any letter case (JSON Schema patterns have no flags)."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


def media_url_pattern(kind: str) -> str:
    """The media URLs the front end accepts for ``kind`` (``image`` or ``video``), as a regex:
    a base64 ``data:`` URL of that media type (``data:video/jpeg;base64,<f1>,<f2>,...`` is
    vLLM's frame-list form), an ``http(s)://`` URL, or an absolute ``file:`` path on this host.
    Schemes and the media type are case-insensitive, as ``media.py`` reads them."""
    subtype = "[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
    params = "(?:;[^;,]*)*"
    data = (f"{_anycase('data')}:[ \\t]*{_anycase(kind)}/{subtype}[ \\t]*{params};[ \\t]*"
            f"{_anycase('base64')}[ \\t]*{params},")
    return (f"^(?:{data}|{_anycase('http')}[Ss]?://|{_anycase('file')}:(?://(?:localhost)?)?/)")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(_Open):
    type: Literal["text"]
    text: StrictStr


def media_url(kind: str, readable: str) -> Any:
    """A media URL field of ``kind`` (``image`` or ``video``): its pattern, and what its bytes
    must be (``readable``), which no pattern can say."""
    return Annotated[StrictStr, Field(pattern=media_url_pattern(kind), description=(
        f"A base64 data:{kind}/* URL, an http(s):// URL (public addresses only, unless "
        f"--allow-private-urls), or a file: path inside --media-dir. {readable} (else 400; a "
        "forbidden host or path: 403; a missing file: 404)."))]


class ImageURL(_Open):
    url: media_url("image", "The bytes must decode as a JPEG, PNG, WebP, GIF, BMP or TIFF image "
                   "within --max-pixels and --max-image-bytes")


class VideoURL(_Open):
    url: media_url("video", "data:video/jpeg;base64,<frame>,<frame>,... is a list of JPEG "
                   "frames. The bytes must be a video the engine reads within --max-video-bytes, "
                   "--max-video-frames and --max-pixels")


class ImageURLPart(_Open):
    type: Literal["image_url"]
    image_url: ImageURL


class VideoURLPart(_Open):
    type: Literal["video_url"]
    video_url: VideoURL


ContentPart = Annotated[TextPart | ImageURLPart | VideoURLPart, Field(discriminator="type")]


Content = StrictStr | list[ContentPart]


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # may be left out, but is not null


class _AssistantMessage(_Open):
    role: Literal["assistant"]
    content: Content | None = None


class _OtherMessage(_Open):
    role: Literal["system", "developer", "user", "tool"]
    content: Content = Field(None, json_schema_extra=_no_default)  # type: ignore[assignment]


class ChatMessage(_Open):
    """A message. ``content`` may be left out; null only in an assistant message (as vLLM reads
    them). Published as the two shapes (``_AssistantMessage``, ``_OtherMessage``)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Content | None = None

    @field_validator("content")
    @classmethod
    def _null_only_for_the_assistant(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.data.get("role", "assistant") != "assistant":
            raise PydanticCustomError("null_content", "may be left out, but is null only in an "
                                      "assistant message")
        return value

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> Any:
        return {"anyOf": [handler(m.__pydantic_core_schema__)
                          for m in (_AssistantMessage, _OtherMessage)]}


class StreamOptions(_Open):
    include_usage: StrictBool | None = None
    continuous_usage_stats: StrictBool | None = None


def _unit(*, lo_open: bool) -> dict[str, Any]:
    return {"type": "number", ("exclusiveMinimum" if lo_open else "minimum"): 0, "maximum": 1}


#: The ``earlytom`` object a request may send: ``config.REQUEST_KEYS`` with the bounds
#: ``EarlyTomConfig`` checks, plus the front end's ``frames_as_video``. Published as is;
#: validated by ``config.request_config`` (the engine's own check, the same 400 messages).
EARLYTOM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Per-request EarlyTom settings (unset keys: the server's).",
    "properties": {
        "retain_ratio": {**_unit(lo_open=True), "description": "share of a video's tokens kept"},
        "prune_layers": {
            "type": "array", "minItems": 1, "uniqueItems": True,
            "items": {"type": "integer", "minimum": 0, "maximum": _MAX_INT},
            "description": "encoder layers after which frames merge, strictly increasing; the "
            "last must exist in the served model's vision encoder and, where it mixes windowed "
            "and full attention (Qwen2.5-VL), be a full-attention block (else 400)"},
        "tau": {**_unit(lo_open=False), "description": "segmentation threshold"},
        "max_window": {"type": "integer", "minimum": 2, "maximum": _MAX_INT},
        "ema": {**_unit(lo_open=True), "description": "similarity smoothing factor"},
        "enabled": {"type": "boolean", "description": "false: this request uncompressed"},
        "keep_last_middle": {"type": "boolean"},
        "method": {"enum": list(METHODS)},
        "frames_as_video": {"type": "boolean", "description": "the request's image_url parts "
                            "are the frames of one video (default: --frames-as-video)"},
    },
}

#: Checked by ``config.request_config`` (one validation path), published as EARLYTOM_SCHEMA.
EarlyTomSettings = Annotated[dict[str, Any] | None, WithJsonSchema(
    {"anyOf": [EARLYTOM_SCHEMA, {"type": "null"}]})]
MMProcessorKwargs = Annotated[dict[str, Any] | None, WithJsonSchema({"anyOf": [
    {"type": "object", "additionalProperties": False,
     "properties": {"earlytom": {"anyOf": [EARLYTOM_SCHEMA, {"type": "null"}]}},
     "description": "vLLM's spelling of the earlytom object (no other key is accepted)"},
    {"type": "null"}]})]


#: Request fields the front end refuses: media loading is the front end's job.
REJECTED_FIELDS = {
    "media_io_kwargs": "media_io_kwargs is not accepted: the front end decides how media is loaded",
}



def refused(why: str) -> Any:
    """A field the front end refuses unless null (published as such, with the reason)."""
    return Annotated[None, Field(description=why)]


class _Sampling(_Open):
    """The sampling fields the front end types (vLLM's bounds: it would refuse the rest)."""

    model_config = ConfigDict(json_schema_extra={  # stream_options only with stream: true
        "if": {"required": ["stream_options"],
               "properties": {"stream_options": {"type": "object"}}},
        "then": {"required": ["stream"], "properties": {"stream": {"const": True}}}})

    model: StrictStr | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: Number | None = Field(None, ge=0, le=2)
    top_p: Number | None = Field(None, gt=0, le=1)
    n: StrictInt | None = Field(None, ge=1)
    seed: StrictInt | None = Field(None, ge=INT64_MIN, le=INT64_MAX)

    @field_validator("stream_options")
    @classmethod
    def _only_when_streaming(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("stream") is not True:
            raise PydanticCustomError("stream_options", "may be set only with stream: true")
        return value


class ChatCompletionRequest(_Sampling):
    """An OpenAI chat completion request (unknown fields pass through to vLLM)."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    earlytom: EarlyTomSettings = None
    mm_processor_kwargs: MMProcessorKwargs = None
    media_io_kwargs: refused(REJECTED_FIELDS["media_io_kwargs"]) = None


NonEmptyStr = Annotated[StrictStr, Field(min_length=1)]
TokenId = Annotated[StrictInt, Field(ge=0)]


#: Fields a completion request may not carry: it has no video to compress, and prompt embeddings
#: would reach the engine without any of the front end's checks.
COMPLETION_REJECTED_FIELDS = {
    **REJECTED_FIELDS,
    "prompt_embeds": "prompt_embeds is not accepted: send a text or token-id prompt",
    "earlytom": "earlytom settings apply to videos: /v1/completions has none (use "
                "/v1/chat/completions)",
    "mm_processor_kwargs": "mm_processor_kwargs is not accepted on /v1/completions (it has no "
                           "media)",
}


class CompletionRequest(_Sampling):
    """An OpenAI (legacy) completion request: a text or token prompt, relayed to vLLM's
    ``/v1/completions`` (unknown fields pass through to vLLM, which validates them)."""

    prompt: (NonEmptyStr | Annotated[list[NonEmptyStr], Field(min_length=1)]
             | Annotated[list[TokenId], Field(min_length=1)]
             | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]],
                         Field(min_length=1)])
    n: StrictInt = Field(1, ge=1)  # not null: vLLM's completions refuse it
    media_io_kwargs: refused(REJECTED_FIELDS["media_io_kwargs"]) = None
    prompt_embeds: refused(COMPLETION_REJECTED_FIELDS["prompt_embeds"]) = None
    earlytom: refused(COMPLETION_REJECTED_FIELDS["earlytom"]) = None
    mm_processor_kwargs: refused(COMPLETION_REJECTED_FIELDS["mm_processor_kwargs"]) = None


#: Fields a prompt-form /tokenize or a /detokenize request may not carry (they have no media).
TOKENIZE_PROMPT_REJECTED_FIELDS = {
    **REJECTED_FIELDS,
    **{name: f"{name} applies to chat-form /tokenize requests (messages) only"
       for name in ("earlytom", "mm_processor_kwargs")},
}


class TokenizeChatRequest(_Open):
    """vLLM's chat-form ``/tokenize``: ``messages``, checked (media included) as chat's are, and
    the ``earlytom`` settings, so that the count is the compressed prompt's."""

    model: StrictStr | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    earlytom: EarlyTomSettings = None
    mm_processor_kwargs: MMProcessorKwargs = None
    media_io_kwargs: refused(REJECTED_FIELDS["media_io_kwargs"]) = None


class TokenizePromptRequest(_Open):
    """vLLM's prompt-form ``/tokenize``: a text ``prompt`` (no media, so no ``earlytom``)."""

    model: StrictStr | None = None
    prompt: StrictStr
    messages: Annotated[None, Field(description="a body with messages is chat-form")] = None
    earlytom: refused(TOKENIZE_PROMPT_REJECTED_FIELDS["earlytom"]) = None
    mm_processor_kwargs: refused(TOKENIZE_PROMPT_REJECTED_FIELDS["mm_processor_kwargs"]) = None
    media_io_kwargs: refused(REJECTED_FIELDS["media_io_kwargs"]) = None


class DetokenizeRequest(_Open):
    """vLLM's ``/detokenize``: token ids back to text."""

    model: StrictStr | None = None
    tokens: list[TokenId]
    earlytom: refused(TOKENIZE_PROMPT_REJECTED_FIELDS["earlytom"]) = None
    mm_processor_kwargs: refused(TOKENIZE_PROMPT_REJECTED_FIELDS["mm_processor_kwargs"]) = None
    media_io_kwargs: refused(REJECTED_FIELDS["media_io_kwargs"]) = None


class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1)
    type: str
    param: str | None
    code: str | int | None


class ErrorResponse(BaseModel):
    """Every error the front end answers (its own, and a backend's rewritten)."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorInfo
    request_id: str | None = None


class _ResponseMessage(_Open):
    role: str
    content: str | None = None


class _Choice(_Open):
    index: int
    message: _ResponseMessage
    finish_reason: str | None = None


class _Usage(_Open):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionResponse(_Open):
    """A non-streamed answer, as vLLM sends it (relayed unchanged)."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[_Choice]
    usage: _Usage | None = None


class _CompletionChoice(_Open):
    index: int
    text: str
    finish_reason: str | None = None


class CompletionResponse(_Open):
    """A non-streamed ``/v1/completions`` answer, as vLLM sends it (relayed unchanged)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[_CompletionChoice]
    usage: _Usage | None = None


class TokenizeResponse(_Open):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeResponse(_Open):
    prompt: str


class VersionResponse(_Open):
    version: str


class _Model(_Open):
    id: str
    object: Literal["model"]


class ModelList(_Open):
    object: Literal["list"]
    data: list[_Model]


class HealthResponse(BaseModel):
    """``/health``: ``ready`` (200), ``unavailable`` or ``draining`` (503, with the error);
    the backends and the supervisor only for callers holding the key, if there is one."""

    status: Literal["ready", "unavailable", "draining"]
    error: ErrorInfo | None = None
    request_id: str | None = None
    backends: list[dict[str, Any]] | None = None
    supervisor: dict[str, Any] | None = None
