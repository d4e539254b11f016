"""The row mapping every SQL backend shares: columns, JSON columns and byte columns."""

from __future__ import annotations

import msgspec
import pytest

from receiver.models import RawRequest, now
from receiver.store.rows import (
    ANSWERED_REQUESTS,
    DELIVERIES,
    EVENTS,
    JOBS,
    QUARANTINE,
    REQUESTS,
    Table,
)

TABLES = [JOBS, EVENTS, DELIVERIES, REQUESTS, ANSWERED_REQUESTS, QUARANTINE]


@pytest.mark.parametrize("table", TABLES, ids=lambda table: table.kind.__name__)
class TestTables:
    def test_columns_are_fields(self, table: Table[msgspec.Struct]) -> None:
        assert set(table.columns) <= set(table.kind.__struct_fields__)

    def test_every_bytes_field_is_declared_binary(self, table: Table[msgspec.Struct]) -> None:
        """Declared by hand (reading the annotations slowed the start): checked here."""
        typed = {f.name for f in msgspec.structs.fields(table.kind) if f.type is bytes}
        assert typed & set(table.columns) == table.binary


def test_a_bytes_like_body_is_stored_as_bytes() -> None:
    raw = RawRequest(
        id="req_1",
        received_at=now(),
        provider="apiframe",
        method="POST",
        path="/hooks/apiframe",
        query="",
        headers={"a": "b"},
        body=memoryview(b'{"x": 1}'),  # type: ignore[arg-type]
        client=None,
    )
    row = dict(zip(REQUESTS.columns, REQUESTS.values(raw), strict=True))
    assert b'{"x": 1}' == row["body"]
    assert type(row["body"]) is bytes
    assert '{"a":"b"}' == row["headers"]
