"""The admin token: RECEIVER_ADMIN_TOKEN, or a file generated beside the database.

The file is the credential to every admin route, so it is made private from its first
byte (written to a 0600 temporary file, then linked into place: a reader sees the
whole token or no file), and one that group or others could read, or that holds a
short token, is refused with the command that fixes it rather than used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from receiver.config import check_token
from receiver.errors import ConfigError
from receiver.verify import mint_token

if TYPE_CHECKING:
    from receiver.config import Settings

__all__ = ["admin_token_file", "ensure_admin_token", "read_token_file", "stored_admin_token"]

log = logging.getLogger("receiver")


def admin_token_file(settings: Settings) -> Path:
    """Where a generated admin token is kept: beside the SQLite file, else the working directory."""
    from receiver.store.sqlite import sqlite_path

    if settings.database_url.startswith("sqlite:"):
        path = sqlite_path(settings.database_url)
        if path != ":memory:":
            return Path(path + ".admin-token")
    return Path("receiver.admin-token")


def read_token_file(path: Path) -> str:
    """The token in `path`; ConfigError if group or others have any access, or it is short."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"admin token file {path} is open to group or others (mode {mode:04o}):"
            f" run `chmod 600 {path}`"
        )
    token = path.read_text().strip()
    check_token(f"admin token file {path}", token)
    return token


def stored_admin_token(settings: Settings) -> str | None:
    """RECEIVER_ADMIN_TOKEN, else the generated file's token, else None (nothing is made)."""
    if settings.admin_token is not None:
        return settings.admin_token
    path = admin_token_file(settings)
    return read_token_file(path) if path.is_file() else None


def ensure_admin_token(settings: Settings) -> str:
    """RECEIVER_ADMIN_TOKEN, or the token generated at first start (created 0600 if absent)."""
    token = stored_admin_token(settings)
    if token is not None:
        return token
    path = admin_token_file(settings)
    if _create_private(path, mint_token() + "\n"):
        log.warning("no RECEIVER_ADMIN_TOKEN set: generated one and wrote it to %s", path.resolve())
    return read_token_file(path)  # ours, or the one another process linked first


def _create_private(path: Path, text: str) -> bool:
    """Write `text` to `path` if it does not exist, mode 0600 from the start; False if it did."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{mint_token()[:8]}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temporary, path)  # fails if another process made the file first
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    return True
