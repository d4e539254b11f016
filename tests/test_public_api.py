"""The public names DESIGN.md promises are exported, once, from the top-level package."""

from __future__ import annotations

import receiver


class TestExports:
    """`from receiver import ...` offers the documented names and nothing missing."""

    def test_documented_names_are_exported(self) -> None:
        """on, Event, Job, Status and create_app are public, with the errors users catch."""
        documented = {"on", "Event", "Job", "Status", "create_app", "Retry", "ReceiverError"}
        assert set() == documented - set(receiver.__all__)

    def test_all_is_sorted_and_importable(self) -> None:
        """`__all__` is one sorted list and every name in it exists."""
        assert sorted(receiver.__all__) == receiver.__all__
        assert [] == [name for name in receiver.__all__ if not hasattr(receiver, name)]

    def test_status_values(self) -> None:
        """Status is a str enum of exactly the five canonical values."""
        assert ["queued", "running", "succeeded", "failed", "cancelled"] == [
            str(status) for status in receiver.Status
        ]
