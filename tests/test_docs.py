"""README.md and docs/: every relative link resolves, and every setting is documented.

The README keeps the first hour and links into docs/ for the rest, so a section that moves
must take its links along; and a setting declared in receiver/config.py that no page names
is a setting nobody can find.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from pathlib import Path

import pytest

from receiver.builtins.settings import SECTIONS
from receiver.config import Settings
from receiver.providers import PROVIDERS, GenericSettings, ProviderSettings

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```.*?^```", flags=re.S | re.M)
_INDENTED = re.compile(r"^(?: {4}.*\n)+", flags=re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_EXTERNAL = ("http://", "https://", "mailto:")


def _prose(text: str) -> str:
    """The text without code, where `[a](b)` is not a link."""
    return _CODE_SPAN.sub("", _INDENTED.sub("", _FENCE.sub("", text)))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to `-`."""
    text = heading.strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, a repeated one numbered as GitHub does."""
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _FENCE.sub("", path.read_text()), flags=re.M):
        base = slug(heading)
        name, number = base, 0
        while name in found:
            number += 1
            name = f"{base}-{number}"
        found.add(name)
    return found


def links(path: Path) -> list[str]:
    """The relative link targets in a Markdown file's prose."""
    targets = _LINK.findall(_prose(path.read_text()))
    return [target for target in targets if not target.startswith(_EXTERNAL)]


class TestLinks:
    """Every relative link in README.md and docs/ names a file that exists, and its heading."""

    def test_the_documents_are_there(self) -> None:
        names = {path.relative_to(ROOT).as_posix() for path in DOCUMENTS}
        assert {"README.md", "docs/README.md", "docs/security.md"} <= names

    @pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: path.relative_to(ROOT).as_posix())
    def test_links_resolve(self, path: Path) -> None:
        broken = []
        for target in links(path):
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file).resolve() if file else path
            if not resolved.exists():
                broken.append(f"{target}: no such file")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
        assert [] == broken

    def test_slugs_are_githubs(self) -> None:
        assert "single-process-sqlite" == slug("Single process (SQLite)")
        assert "postgresql-several-processes" == slug("PostgreSQL, several processes")
        assert "per-job-urls" == slug("Per-job URLs")


def _documented() -> str:
    return "\n".join(path.read_text() for path in DOCUMENTS)


class TestSettingsAreDocumented:
    """Every setting receiver/config.py declares is named somewhere in README.md or docs/."""

    def test_receiver_settings(self) -> None:
        text = _documented()
        sections = {"providers", "generic", *SECTIONS}
        names = [f"RECEIVER_{field.upper()}" for field in Settings.__struct_fields__]
        missing = [
            name
            for name in names
            if name.lower().removeprefix("receiver_") not in sections
            and not re.search(rf"`{name}[`,= ]", text)
        ]
        assert [] == missing

    def test_provider_settings(self) -> None:
        text = _documented()
        missing = [
            field
            for field in ProviderSettings.__struct_fields__
            if f"RECEIVER_<PROVIDER>_{field.upper()}" not in text
        ]
        assert [] == missing
        assert all(f"`{name.upper()}`" in text for name in PROVIDERS)

    def test_generic_provider_settings(self) -> None:
        text = (ROOT / "docs" / "providers.md").read_text()
        missing = [
            field
            for field in GenericSettings.__struct_fields__
            if not re.search(rf"(RECEIVER_ACME|`)_{field.upper()}\b|^{field} = ", text, re.M)
        ]
        assert [] == missing

    def test_builtin_handler_settings(self) -> None:
        intro, *parts = (ROOT / "docs" / "builtins.md").read_text().split("\n## ")
        [example] = re.findall(r"```toml\n(.*?)```", intro, flags=re.S)
        in_toml = tomllib.loads(example)
        missing = []
        for section, (kind, _) in SECTIONS.items():
            [own] = [part for part in parts if part.startswith(f"{section}\n")]
            for field in kind.__struct_fields__:
                named = rf"RECEIVER_{section.upper()}_{field.upper()}\b|`_{field.upper()}[`=]"
                if field not in in_toml[section] and not re.search(named, intro + own):
                    missing.append(f"{section}.{field}")
        assert [] == missing
