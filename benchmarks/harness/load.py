"""The load a client benchmark offers a server: closed-loop concurrency levels and open-loop
request rates (``vllm bench serve``'s arrivals), the run's interleaved schedule, and the record
of one request.

``--concurrency`` levels are closed loops (c workers, one request in flight each);
``--request-rate R[,R...]`` adds open-loop
levels: ``--rate-requests`` requests per cell sent at Poisson arrival times (gamma intervals
with ``--burstiness``, 1 = Poisson, normalised to n / R seconds like vLLM's ``get_request``;
seeded with ``--arrival-seed``, the same arrivals for every method at a level; ``inf`` = all
at once), optionally capped by ``--max-concurrency``. Every cell carries ``vllm bench
serve``'s metrics: ``completed``, ``failed``, ``duration``, ``total_input_tokens``,
``total_output_tokens``, ``request_throughput``, ``request_goodput``, ``output_throughput``,
``total_token_throughput`` and ``mean_/median_/std_/pNN_{ttft,tpot,itl,e2el}_ms``
(``--percentiles``, default 50,90,99). TTFT is the first chunk with content; TPOT
= (E2E - TTFT) / (output tokens - 1); ITL = the gaps between streamed chunks after it; E2E =
send to the last chunk. Goodput (``--goodput ttft:MS tpot:MS e2el:MS``) = requests/s meeting
every given SLO (a request with one output token has TPOT 0), as vLLM defines it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks.harness.client import RequestRecord

#: ``--goodput``'s SLO names (vllm bench serve's).
SLO_NAMES = ("ttft", "tpot", "e2el")


def parse_requests(spec: str, c: int) -> int:
    """'2c+2' / '3c' / 'c+1' / '6' -> a request count for concurrency c."""
    text = spec.replace(" ", "").lower()
    if text.isdigit():
        return max(1, int(text))
    total = 0
    for term in text.replace("-", "+-").split("+"):
        if not term:
            continue
        if term.endswith("c"):
            coef = term[:-1]
            total += (int(coef) if coef not in ("", "-") else (-1 if coef == "-" else 1)) * c
        else:
            total += int(term)
    if total < 1:
        raise ValueError(f"--requests {spec!r} gives {total} requests at concurrency {c}")
    return total


def parse_goodput(pairs: Sequence[str] | None) -> dict[str, float]:
    """``["ttft:5000", "e2el:20000"]`` -> ``{"ttft": 5000.0, "e2el": 20000.0}`` (milliseconds;
    vllm bench serve's ``--goodput`` form and names)."""
    out: dict[str, float] = {}
    for pair in pairs or ():
        name, sep, value = pair.partition(":")
        try:
            ms = float(value)
        except ValueError:
            ms = -1.0
        if not sep or name not in SLO_NAMES or ms < 0:
            raise ValueError(f"--goodput {pair!r}: want KEY:MS with KEY in {', '.join(SLO_NAMES)} "
                             "and MS >= 0")
        out[name] = ms
    return out


def rate_level(rate: float) -> str:
    """The level key of a request rate: ``rate=2``, ``rate=inf``."""
    return f"rate={rate:g}"


def level_rate(level: int | str) -> float | None:
    """The request rate of a ``rate=R`` level; None for a concurrency level."""
    if isinstance(level, str) and level.startswith("rate="):
        return float(level.removeprefix("rate="))
    return None


def parse_levels(concurrency: str | None, request_rate: str | None) -> list[int | str]:
    """Concurrency levels (ints) then request-rate levels (``rate=R``); concurrency defaults to
    1,2,4,8 unless only rates are given."""
    if concurrency is None and not request_rate:
        concurrency = "1,2,4,8"
    levels: list[int | str] = [int(x) for x in (concurrency or "").split(",") if x.strip()]
    for x in (request_rate or "").split(","):
        if x.strip():
            rate = float(x)
            if not rate > 0:
                raise SystemExit(f"--request-rate {x!r}: must be > 0 (or inf)")
            levels.append(rate_level(rate))
    if not levels:
        raise SystemExit("no load level: give --concurrency and/or --request-rate")
    return levels


def arrival_offsets(n: int, rate: float, seed: int, burstiness: float = 1.0) -> list[float]:
    """Send times (seconds after the cell starts) of ``n`` requests at ``rate`` requests/s, as
    ``vllm bench serve``'s ``get_request`` draws them: gamma intervals (shape ``burstiness``,
    mean 1 / rate; burstiness 1 = a Poisson process) from the first request on, cumulated and
    rescaled so that the last one is sent at n / rate. ``inf``: all at 0."""
    if n < 1:
        return []
    if math.isinf(rate):
        return [0.0] * n
    if not rate > 0 or not burstiness > 0:
        raise ValueError("rate and burstiness must be > 0")
    import numpy as np

    gaps = np.random.default_rng(seed).gamma(shape=burstiness, scale=1.0 / (rate * burstiness),
                                             size=n)
    times = np.cumsum(gaps)
    times *= (n / rate) / times[-1]
    return [float(t) for t in times]


def split_even(n: int, parts: int) -> list[int]:
    parts = max(1, min(parts, n))
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def schedule(methods: Sequence[str], levels: Sequence[int | str], args: argparse.Namespace
             ) -> list[tuple[int | str, int, str, int]]:
    """(level, round, method, requests) in run order (``methods``: the arms' labels). A
    request-rate level is one round of ``--rate-requests`` per method (one arrival stream)."""
    plan: list[tuple[int | str, int, str, int]] = []
    for k, level in enumerate(levels):
        rot = list(methods[k % len(methods):]) + list(methods[:k % len(methods)])
        if level_rate(level) is not None:
            plan += [(level, 0, m, max(1, args.rate_requests)) for m in rot]
            continue
        c = int(level)
        n = parse_requests(args.requests, c)
        # a round never holds fewer requests than the concurrency it is meant to reach
        per_round = split_even(n, max(1, min(args.rounds, n // c)))
        for r, n in enumerate(per_round):
            order = rot if r % 2 == 0 else rot[::-1]
            plan += [(c, r, m, n) for m in order]
    return plan




@dataclass(kw_only=True)
class Sample(RequestRecord):
    """One request of a throughput cell."""

    method: str  # the arm's label
    concurrency: int | None  # None in a request-rate cell
    round: int
    index: int
    seed: int
    start_s: float  # since the start of the run
    finish_reason: str | None = None
    level: str = ""  # the cell's level key: "4" (concurrency) or "rate=2"
    scheduled_s: float | None = None  # request-rate cells: the arrival time in the cell
    itl_s: list[float] = field(default_factory=list)  # gaps between chunks after the first token
