"""Hypothesis strategies for hostile input: bodies, JSON values, headers and query strings."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

__all__ = [
    "FIELD_NAMES",
    "ODD_TEXT",
    "TASK",
    "bodies",
    "json_values",
    "provider_shaped",
    "query_strings",
    "status_words",
]

# Characters that trip naive code: NUL, controls, RTL and other bidi overrides, combining
# marks, zero-width joiners, a BOM, the replacement character, astral characters and
# lone surrogates (valid in a Python str and in a JSON \u escape, not in UTF-8).
_ODD_CHARS = (
    "\x00\x01\x1f\x7f\x85\xa0\xad"
    "\u200b\u200d\u200e\u200f\u202a\u202e\u2066\u2069"
    "\u0301\u0336\u0489\ufe0f\ufeff\ufffd\uffff"
    "\U0001f600\U0010ffff"
    "\ud800\udbff\udc00\udfff"
    "%\\\"'/?#&;=+ \t\n\r"
)
ODD_TEXT = st.text(
    alphabet=st.one_of(st.sampled_from(_ODD_CHARS), st.characters(codec="utf-8")),
    max_size=40,
)

# Names the adapters read, so generated objects reach past the first `get`.
FIELD_NAMES = (
    "status",
    "state",
    "task_id",
    "uuid",
    "data",
    "code",
    "msg",
    "message",
    "error",
    "percentage",
    "progress",
    "video_url",
    "url",
    "gif_url",
    "preview_url",
    "poster",
    "last_frame",
    "endpoint",
    "task_type",
    "detail",
    "errors",
    "image_url",
)

# Every status word an adapter knows, in odd spellings too, plus numbers as text.
_WORDS = [
    *[
        "processing",
        "finished",
        "completed",
        "failed",
        "error",
        "cancelled",
        "canceled",
        "success",
        "submitted",
        "running",
        "in_progress",
        "pending",
        "queued",
        "succeeded",
        "0",
        "1",
        "2",
        "3",
        "3.0",
        "200",
        "500",
    ],
    *("in queue", "IN QUEUE", " Finished ", "FAILED", "-0", "1e400", "NaN", ""),
]


def status_words() -> st.SearchStrategy[Any]:
    """Status values as sent, mis-sent and mistyped."""
    return st.one_of(
        st.sampled_from(_WORDS),
        st.sampled_from(_WORDS).map(str.upper),
        st.integers(-5, 600),
        st.floats(allow_nan=True, allow_infinity=True),
        ODD_TEXT,
        st.none(),
        st.booleans(),
        st.lists(st.sampled_from(_WORDS), max_size=2),
    )


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # beyond 64 bits too
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    ODD_TEXT,
)


def json_values(*, max_leaves: int = 30) -> st.SearchStrategy[Any]:
    """Any JSON value, keys and strings full of odd unicode."""
    return st.recursive(
        _SCALARS,
        lambda inner: st.one_of(
            st.lists(inner, max_size=5),
            st.dictionaries(st.one_of(ODD_TEXT, st.sampled_from(FIELD_NAMES)), inner, max_size=5),
        ),
        max_leaves=max_leaves,
    )


def provider_shaped(depth: int = 2) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with the fields adapters read, each holding a plausible or a wrong value."""
    value: st.SearchStrategy[Any] = st.one_of(status_words(), json_values(max_leaves=8))
    if depth > 0:
        value = st.one_of(value, provider_shaped(depth - 1))
    return st.dictionaries(st.sampled_from(FIELD_NAMES), value, max_size=8)


TASK = "TASK-ID-PLACEHOLDER"  # replaced by the test with the job's own task id


def plausible_callbacks() -> st.SearchStrategy[bytes]:
    """Callbacks that could be real: a known status, often the job's own task id (TASK)."""
    fields = st.fixed_dictionaries(
        {"status": st.sampled_from(_WORDS)},
        optional={
            "task_id": st.sampled_from([TASK, TASK, "other-task-9"]),
            "state": st.sampled_from(["pending", "running", "succeeded", "error", "weird"]),
            "percentage": st.one_of(st.integers(-10, 200), st.sampled_from(["40", "40%", "x"])),
            "progress": st.one_of(st.floats(-1, 200), st.none()),
            "video_url": st.sampled_from(["https://cdn.example/v.mp4", "", "\u202e", None]),
            "message": ODD_TEXT,
        },
    )
    wrapped = fields.map(lambda data: {"code": 200, "data": data})
    return st.builds(_encode, st.one_of(fields, fields, wrapped), st.booleans())


def _encode(value: Any, ascii_only: bool) -> bytes:
    # ensure_ascii turns lone surrogates into \udXXX escapes; without it they cannot be
    # encoded as UTF-8, so they go out as the bytes Python's surrogatepass makes (invalid).
    text = json.dumps(value, ensure_ascii=ascii_only, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


def _deep(depth: int, opener: str) -> bytes:
    if opener == "[":
        return b"[" * depth + b"]" * depth
    return b'{"status":' * depth + b"1" + b"}" * depth


def bodies(max_bytes: int) -> st.SearchStrategy[bytes]:
    """Request bodies: random bytes, JSON of any shape, provider-shaped JSON, huge and deep."""
    json_body = st.builds(_encode, st.one_of(json_values(), provider_shaped()), st.booleans())
    return st.one_of(
        *[plausible_callbacks()] * 4,  # a third of the cases could be accepted
        st.binary(max_size=256),
        json_body,
        json_body,  # twice: most bodies should get past the JSON decoder
        st.builds(_encode, provider_shaped(), st.booleans()),
        # Deep nesting, up to far beyond any recursion limit.
        st.builds(_deep, st.integers(1, 200_000), st.sampled_from("[{")),
        # Huge: around the body limit, on both sides of it.
        st.integers(max_bytes - 64, max_bytes + 64).map(
            lambda n: (
                (b'{"status":"processing","pad":"' + b"x" * n + b'"}')[: max(n, 0)]
                if n % 2
                else b'{"status":"processing","pad":"' + b"x" * n + b'"}'
            )
        ),
        # Valid-looking JSON with broken UTF-8 or NUL bytes spliced into strings.
        st.builds(
            lambda prefix, junk: b'{"status":"' + prefix + junk + b'","task_id":"t"}',
            st.sampled_from([b"", b"finished", b"processing"]),
            st.sampled_from(
                [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\x00", b"\\u0000", b"\\ud800"]
            ),
        ),
        # JSON that is not an object at the top.
        st.sampled_from(
            [b"", b"null", b"[]", b"0", b'"x"', b"true", b"NaN", b"1e999", b"\xef\xbb\xbf{}"]
        ),
    )


_QUERY_PIECES = st.one_of(
    st.sampled_from(
        [
            "uuid=",
            "uuid",
            "uuid=%",
            "uuid=%zz",
            "uuid=%ff%fe",
            "uuid=%00",
            "uuid=%ed%a0%80",
            "uuid=a%2Fb",
            "uuid=..%2F..%2Fadmin",
            "UUID=x",
            "uuid[]=x",
            "token=a?uuid=t",
            "=",
            "&",
            ";",
            "?",
            "#",
            "%",
            "%%",
            "+",
        ]
    ),
    ODD_TEXT.map(lambda text: "uuid=" + quote(text.encode("utf-8", "surrogatepass"), safe="")),
    st.sampled_from(["uuid=", "uuid=%s"]).flatmap(lambda head: st.just(head + "task-1")),
    st.binary(max_size=12).map(lambda raw: "uuid=" + raw.decode("latin-1")),
)


def query_strings() -> st.SearchStrategy[bytes]:
    """Raw query strings: repeated and conflicting uuids, percent-encoding garbage, glued `?`."""
    return st.lists(_QUERY_PIECES, max_size=6).flatmap(
        lambda pieces: st.sampled_from(["&", ";", "", "?"]).map(
            lambda sep: sep.join(pieces).encode("latin-1", "replace")
        )
    )
