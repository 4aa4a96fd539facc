"""One streamed chat request to an OpenAI-compatible server, timed as the client sees it."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class Streamed:
    """What one streamed request gave. TTFT: send -> the first chunk with content (the first
    chunk of any kind where random weights decode to empty strings only)."""

    sent: float  # time.perf_counter() at sending
    ttft_s: float | None = None
    ttft_source: str | None = None  # "first_content" or "first_chunk"
    latency_s: float | None = None  # send -> the stream's end
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    text: str = ""
    itl_s: list[float] = field(default_factory=list)  # gaps between chunks after the first token
    error: str | None = None  # an exception, or a stream without usage or without any chunk

    @property
    def ok(self) -> bool:
        return self.error is None


async def stream_chat(client: Any, *, model: str, messages: list[dict[str, Any]],
                      max_tokens: int, extra_body: dict[str, Any]) -> Streamed:
    """Send ``messages`` (greedy, streaming, usage included) with ``openai.AsyncOpenAI``
    ``client``; never raises (a failure is the result's ``error``)."""
    out = Streamed(sent=time.perf_counter())
    t0 = out.sent
    first_any: float | None = None
    first_content: float | None = None
    chunks: list[float] = []  # times of the chunks with choices (vllm bench serve's ITL basis)
    pieces: list[str] = []
    try:
        stream = await client.chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens, temperature=0.0, stream=True,
            stream_options={"include_usage": True}, extra_body=extra_body)
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices:
                chunks.append(now)
                choice = chunk.choices[0]
                delta = choice.delta.content
                if first_any is None and (delta is not None or choice.finish_reason):
                    first_any = now
                if delta:
                    first_content = first_content or now
                    pieces.append(delta)
                if choice.finish_reason:
                    out.finish_reason = choice.finish_reason
            if chunk.usage is not None:
                out.prompt_tokens = chunk.usage.prompt_tokens
                out.completion_tokens = chunk.usage.completion_tokens
        out.latency_s = time.perf_counter() - t0
        first = first_content or first_any
        if first is not None:
            out.ttft_s = first - t0
            out.ttft_source = "first_content" if first_content else "first_chunk"
            after = [t for t in chunks if t >= first]
            out.itl_s = [round(b - a, 6) for a, b in itertools.pairwise(after)]
        out.text = "".join(pieces)
        if out.completion_tokens is None or out.ttft_s is None:
            out.error = "no usage or no chunk in the stream"
    except Exception as exc:  # recorded, the caller goes on
        out.latency_s = time.perf_counter() - t0
        out.error = f"{type(exc).__name__}: {exc}"[:500]
    return out


@dataclass(kw_only=True)
class RequestRecord:
    """What a benchmark keeps of one streamed request (its own record extends this)."""

    ok: bool = False
    ttft_s: float | None = None
    ttft_source: str | None = None
    latency_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None

    def record(self, got: Streamed) -> None:
        """Take ``got``'s outcome."""
        for f in fields(RequestRecord):
            setattr(self, f.name, getattr(got, f.name))
