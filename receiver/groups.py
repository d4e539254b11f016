"""Provider groups: one name for several resellers of the same models, tried in order.

`[groups] runway = ["apiframe", "rixapi", "aivideoapi"]` in receiver.toml (or
RECEIVER_GROUPS="runway=apiframe,rixapi,aivideoapi") lets a job be submitted to
`runway` with the common fields below; each member's adapter maps them onto its own
API (`Provider.common_request`). The submitter moves to the next member only when one
certainly did not take the job: a definite refusal (a 4xx other than 408 and 429), an
adapter that cannot express the fields, or an open circuit. Never after an uncertain
create: that job stays with the member that may have it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from receiver.errors import ConfigError, ProviderError, did_you_mean

__all__ = ["COMMON_FIELDS", "check_common", "check_groups", "parse_groups", "refused"]

# What a group's job is described with, whichever member takes it.
COMMON_FIELDS = ("prompt", "duration", "ratio", "image_url", "model")


def parse_groups(text: str) -> dict[str, list[str]]:
    """RECEIVER_GROUPS: `name=member,member` entries separated by `;`."""
    found: dict[str, list[str]] = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        name, sep, members = item.partition("=")
        if not (sep and name.strip()):
            raise ConfigError(
                "RECEIVER_GROUPS: each entry must look like name=provider,provider,"
                f" got {item[:40]!r}"
            )
        found[name.strip()] = [m.strip() for m in members.split(",") if m.strip()]
    return found


def check_groups(
    groups: Mapping[str, list[str]], *, providers: Collection[str], members: Collection[str]
) -> None:
    """ConfigError unless every group has a fresh name and distinct members, each one of
    `members` (the providers whose adapters map the common fields)."""
    for name, named in groups.items():
        where = f"RECEIVER_GROUPS ({name})"
        if name in providers:
            raise ConfigError(f"{where}: a group cannot take a provider's name")
        if not named:
            raise ConfigError(f"{where}: name at least one provider")
        for member in named:
            if member not in members:
                raise ConfigError(
                    f"{where}: {member!r} cannot be a member; one of {', '.join(sorted(members))}"
                )
        if len(set(named)) != len(named):
            raise ConfigError(f"{where}: a provider is named twice")


def check_common(group: str, fields: Mapping[str, Any]) -> None:
    """ConfigError (400, exit 2) for a field a group does not know, or without a prompt."""
    listing = f"a group's fields: {', '.join(COMMON_FIELDS)}"
    for name in fields:
        if name not in COMMON_FIELDS:
            hint = did_you_mean(name, COMMON_FIELDS, cutoff=0.5)
            raise ConfigError(f"group {group} has no field {name!r}{hint}; {listing}")
    if fields.get("prompt") in (None, ""):
        raise ConfigError(f"group {group} needs prompt; {listing}")


def refused(exc: ProviderError) -> bool:
    """Whether the provider certainly did not take the job: a 4xx other than 408 (which
    a proxy sends for a request it may have passed on) and 429 (come back later)."""
    code = exc.status_code
    return code is not None and 400 <= code < 500 and code not in (408, 429)
