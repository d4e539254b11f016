"""Ids: the ULID layout in Crockford's alphabet, increasing within a process, and ids of a
given moment that sort by it."""

from __future__ import annotations

import os
import random
import time

from receiver import models
from receiver.models import base32, first_id_at, id_at, new_id

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def reference(value: int) -> str:
    """Crockford base32 a character at a time: 26 groups of 5 bits, most significant first."""
    return "".join(ALPHABET[(value >> (5 * (25 - i))) & 31] for i in range(26))


class TestNewId:
    def test_base32_matches_the_reference_encoding(self) -> None:
        values = [0, 1, 31, 32, (1 << 128) - 1, 1 << 127, 1 << 125, (1 << 125) - 1]
        values += [random.getrandbits(128) for _ in range(1000)]
        for value in values:
            assert reference(value) == base32(value), hex(value)

    def test_time_then_randomness(self) -> None:
        before = int(time.time() * 1000)
        prefix, body = new_id("evt").split("_")
        after = int(time.time() * 1000)
        assert "evt" == prefix
        assert 26 == len(body) and set(body) <= set(ALPHABET)
        assert body == reference(models._last_id[0] << 80 | models._last_id[1])
        assert before <= models._last_id[0] <= after

    def test_ids_increase_within_a_process(self) -> None:
        ids = [new_id("dlv") for _ in range(10_000)]
        assert ids == sorted(ids)
        assert len(set(ids)) == len(ids)

    def test_random_parts_do_not_repeat_across_pool_refills(self) -> None:
        """The bytes come from a pool read 4,000 at a time; each 80-bit part is used once."""
        parts = [models._random.take_80_bits() for _ in range(2_000)]  # five refills
        assert len(set(parts)) == len(parts)
        assert all(0 <= part < 1 << 80 for part in parts)

    def test_a_forked_child_draws_its_own_random_bytes(self) -> None:
        """After fork the child does not reuse what is left of its parent's pool."""
        models._random.take_80_bits()  # the pool now holds unused bytes the child would share
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover (the child)
            os.write(write, models._random.take_80_bits().to_bytes(10, "big"))
            os._exit(0)
        os.close(write)
        in_child = int.from_bytes(os.read(read, 10), "big")
        os.close(read)
        os.waitpid(child, 0)
        assert in_child != models._random.take_80_bits()


class TestIdsOfAMoment:
    """An id minted at a given time sorts by that time, and new_id's sequence is untouched."""

    def test_minted_at_the_time_given(self) -> None:
        last = list(models._last_id)
        at = 1_000_000.123
        prefix, body = id_at("req", at).split("_")
        assert "req" == prefix
        assert body[:10] == reference(1_000_000_123 << 80)[:10]
        assert last == models._last_id

    def test_the_first_id_of_a_moment_bounds_every_earlier_one(self) -> None:
        """The retention walks ids below the cutoff's first one: everything minted before
        the cutoff's millisecond, nothing minted at it or later."""
        cutoff = 1_700_000_000.5
        first = first_id_at("evt", cutoff)
        assert "evt_" + reference(1_700_000_000_500 << 80) == first
        earlier = [id_at("evt", cutoff - delta) for delta in (0.001, 1.0, 86400.0)]
        later = [id_at("evt", cutoff + delta) for delta in (0.0, 0.001, 86400.0)]
        assert all(old < first for old in earlier)
        assert all(new >= first for new in later)
        assert new_id("evt") >= first_id_at("evt", time.time() - 1)

    def test_times_an_id_cannot_hold_are_its_ends(self) -> None:
        """A `since` of infinity (GET /costs takes any number) bounds nothing out of range."""
        assert "job_" + reference(((1 << 48) - 1) << 80) == first_id_at("job", float("inf"))
        assert first_id_at("job", 1e300) == first_id_at("job", float("inf"))
        assert "job_" + "0" * 26 == first_id_at("job", -5.0)
