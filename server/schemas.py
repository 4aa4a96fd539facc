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
(``app.canonical_earlytom``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(_Open):
    type: Literal["text"]
    text: StrictStr


class MediaURL(_Open):
    url: StrictStr = Field(min_length=1)


class ImageURLPart(_Open):
    type: Literal["image_url"]
    image_url: MediaURL


class VideoURLPart(_Open):
    type: Literal["video_url"]
    video_url: MediaURL


ContentPart = Annotated[TextPart | ImageURLPart | VideoURLPart, Field(discriminator="type")]


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[ContentPart] | None = None


class StreamOptions(_Open):
    include_usage: StrictBool | None = None
    continuous_usage_stats: StrictBool | None = None


class ChatCompletionRequest(_Open):
    """An OpenAI chat completion request (unknown fields pass through to vLLM)."""

    model: StrictStr | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1)
    seed: int | None = None
    earlytom: dict[str, Any] | None = None
    mm_processor_kwargs: dict[str, Any] | None = None


#: Request fields the front end refuses: media loading is the front end's job.
REJECTED_FIELDS = {
    "media_io_kwargs": "media_io_kwargs is not accepted: the front end decides how media is loaded",
}


class CompletionRequest(_Open):
    """An OpenAI (legacy) completion request: a text or token prompt, relayed to vLLM's
    ``/v1/completions`` (unknown fields pass through to vLLM, which validates them)."""

    model: StrictStr | None = None
    prompt: StrictStr | list[StrictStr] | list[int] | list[list[int]]
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1)
    seed: int | None = None


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


class TokenizeRequest(_Open):
    """vLLM's ``/tokenize`` (``prompt``, or chat-form ``messages``, checked as chat's are) and
    ``/detokenize`` (``tokens``) requests; other fields pass through to vLLM."""

    model: StrictStr | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    earlytom: dict[str, Any] | None = None
    mm_processor_kwargs: dict[str, Any] | None = None


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
