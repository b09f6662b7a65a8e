"""Every check on what a client sent that the request schemas cannot express.

The schemas (``tandem.server.schemas``) hold the fixed bounds; what depends on
the configuration (``max_k``, ``max_batch_queries``, ``max_input_chars``) or
on text content (NUL, lone surrogates) is checked here, once, and refused
with a message that names what to fix.
"""

from __future__ import annotations

import math

from tandem.server.domain import FilterValue, SearchOptions
from tandem.server.errors import EmptyQuery, InvalidRequest, QueryTooLong
from tandem.server.settings import ServerSettings

# SQLite compares metadata as 64-bit integers; larger ones cannot be bound.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_count(n: int, settings: ServerSettings, noun: str = "queries") -> None:
    if n == 0:
        raise InvalidRequest(f"no {noun} given")
    if n > settings.max_batch_queries:
        raise InvalidRequest(
            f"{n} {noun} in one request; the limit is {settings.max_batch_queries}"
        )


def check_texts(
    texts: list[str], settings: ServerSettings, noun: str = "query"
) -> tuple[list[str], list[bool]]:
    """Refuse empty or unencodable texts; cut (or refuse) texts past max_input_chars.

    Returns the texts to tokenize and, per text, whether it was cut.
    """
    limit = settings.max_input_chars
    out, cut = [], []
    for i, text in enumerate(texts):
        where = f"{noun} {i}" if len(texts) > 1 else noun
        if not text.strip():
            raise EmptyQuery(f"{where} is empty")
        if problem := text_problem(text):
            raise InvalidRequest(f"{where} {problem}")
        if len(text) > limit:
            if not settings.truncate:
                raise QueryTooLong(f"{where} has {len(text)} characters; the limit is {limit}")
            text = text[:limit]
        out.append(text)
        cut.append(len(text) < len(texts[i]))
    return out, cut


def check_token_truncation(
    truncated: list[bool], settings: ServerSettings, max_length: int
) -> None:
    """Without ``truncate``, a text past the encoder's maximum length is refused."""
    if any(truncated) and not settings.truncate:
        first = truncated.index(True)
        raise QueryTooLong(f"query {first} is longer than the encoder's {max_length} tokens")


def check_options(options: SearchOptions, settings: ServerSettings) -> None:
    if options.k > settings.max_k:
        raise InvalidRequest(f"k={options.k} is above this server's max_k={settings.max_k}")
    if options.filter:
        check_filter(options.filter)


def check_dimensions(dimensions: int | None, model_dim: int) -> None:
    if dimensions is not None and dimensions > model_dim:
        raise InvalidRequest(f"dimensions={dimensions} is above the model's {model_dim} dimensions")


def text_problem(text: str) -> str | None:
    """Why a text cannot be searched, or None: NUL characters and lone surrogates.

    A lone surrogate (``"\\ud800"`` is valid JSON) cannot be encoded to UTF-8, so
    neither the tokenizer nor SQLite accepts it; a NUL is almost always binary
    data sent by mistake. Both are refused with the position to fix.
    """
    nul = text.find("\x00")
    if nul >= 0:
        return f"contains a NUL character (\\u0000) at position {nul}; remove it"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"contains a lone surrogate ({text[exc.start]!r}) at position {exc.start}; "
            "send valid Unicode text"
        )
    return None


def check_filter(equals: dict[str, FilterValue]) -> None:
    """Refuse filters SQLite cannot evaluate, naming the key to fix."""
    for key, value in equals.items():
        if not key or '"' in key or text_problem(key):
            raise InvalidRequest(
                f"unsupported metadata key {key!r} in filter: "
                "use non-empty text without double quotes, NUL or lone surrogates"
            )
        if isinstance(value, str) and (problem := text_problem(value)):
            raise InvalidRequest(f"filter value of {key!r} {problem}")
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
            raise InvalidRequest(f"filter value of {key!r} is outside the 64-bit integer range")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidRequest(f"filter value of {key!r} must be a finite number")
