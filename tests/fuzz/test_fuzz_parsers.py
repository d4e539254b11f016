"""Fuzzing every adapter's parsers: a valid canonical Update or the documented error, nothing else.

`parse_callback` gets what the hook route hands it (a JSON object); `parse_status` and
`parse_created` get what the gateway decodes from any answer, NaN, infinities and lone
surrogates included.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from payloads import json_values, provider_shaped
from tally import count, examples

from receiver.errors import ProviderError, UnparseablePayload
from receiver.models import Status, Update
from receiver.providers import PROVIDERS, Created
from receiver.providers.base import _decode_answer  # what the gateway hands adapters

CASES = examples(3000)
NAMES = sorted(PROVIDERS)


def assert_canonical(update: object) -> None:
    """What the store and the state machine rely on in every Update an adapter returns."""
    assert isinstance(update, Update)
    assert isinstance(update.status, Status)
    assert isinstance(update.raw_status, str) and update.raw_status != ""
    assert update.progress is None or (
        isinstance(update.progress, float) and 0.0 <= update.progress <= 1.0
    )
    for text in (
        update.task_id,
        update.result_url,
        update.preview_url,
        update.error,
        update.error_code,
        update.delivery_id,
    ):
        assert text is None or (isinstance(text, str) and text != "")
    assert update.payload is None or isinstance(update.payload, dict)
    if update.status is Status.SUCCEEDED:
        assert 1.0 == update.progress
    # The store keeps it as JSON text in UTF-8: both must be possible.
    encoded = msgspec.json.encode(update)
    assert update == msgspec.json.decode(encoded, type=Update) or _has_nan(update.payload)


def _has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value) or math.isinf(value)
    if isinstance(value, dict):
        return any(_has_nan(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_nan(item) for item in value)
    return False


def _as_answer(value: Any) -> Any:
    """`value` sent as a provider's answer, as the gateway decodes it for the adapter."""
    return _decode_answer(json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass"))


# Answers as the gateway sees them: any JSON, provider-shaped objects, wrapped in `data`.
ANSWERS = st.one_of(
    json_values(),
    provider_shaped(),
    provider_shaped().map(lambda data: {"code": 200, "status": "success", "data": data}),
    st.tuples(st.sampled_from([200, "200", 500, "500", None, "x"]), provider_shaped()).map(
        lambda pair: {"code": pair[0], "msg": "m", "data": pair[1]}
    ),
    st.sampled_from([float("nan"), float("inf"), 10**40, "\ud800", {"status": "\udfff"}]),
).map(_as_answer)
CALLBACKS = st.one_of(
    provider_shaped(),
    st.dictionaries(st.text(max_size=10), json_values(max_leaves=10), max_size=6),
    provider_shaped().map(lambda data: {"code": 200, "data": data}),
)
# The gateway pulls only ids that pass valid_task_id.
TASK_IDS = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,40}\Z")
ADAPTERS = [PROVIDERS[name] for name in sorted(PROVIDERS)]


def _check(target: str, parse: Callable[[], object], allowed: tuple[type[Exception], ...]) -> None:
    with count(target):
        try:
            result = parse()
        except allowed:
            return
        if isinstance(result, Created):
            assert result.task_id is None or isinstance(result.task_id, str)
            if result.update is not None:
                assert_canonical(result.update)
        else:
            assert_canonical(result)


class TestParserFuzz:
    """Adapters read any body without an error other than their documented ones.

    Each generated body goes to every parser of every adapter: generating is what costs,
    so every target gets every case.
    """

    @settings(settings.get_profile("fuzz"), max_examples=CASES)
    @given(body=CALLBACKS)
    def test_parse_callback(self, body: dict[str, Any]) -> None:
        for adapter in ADAPTERS:
            _check(
                f"{adapter.name}.parse_callback",
                lambda: adapter.parse_callback(body),  # noqa: B023 - called at once
                (UnparseablePayload,),
            )

    @settings(settings.get_profile("fuzz"), max_examples=CASES)
    @given(body=ANSWERS, task_id=TASK_IDS)
    def test_parse_answers(self, body: Any, task_id: str) -> None:
        for adapter in ADAPTERS:
            _check(
                f"{adapter.name}.parse_status",
                lambda: adapter.parse_status(body, task_id),  # noqa: B023 - called at once
                (UnparseablePayload, ProviderError),
            )
            _check(
                f"{adapter.name}.parse_created",
                lambda: adapter.parse_created(body),  # noqa: B023 - called at once
                (ProviderError,),
            )
