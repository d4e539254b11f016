"""`receiver trigger PROVIDER STATUS --job ID`: one realistic callback for a job, in a sandbox.

It asks the running receiver (`POST /jobs/{id}/trigger`, admin token) to record the
provider's own body for that status, read by the provider's real adapter; handlers then
fire as for a callback the provider sent. No provider account is involved.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from receiver.admin_token import admin_token_file, stored_admin_token
from receiver.cli.common import (
    EXIT_OK,
    EXIT_STORE,
    EXIT_USAGE,
    common_options,
    print_json,
    setting,
    settings_from,
)
from receiver.cli.replay import EXIT_NOTHING
from receiver.config import Settings, local_url
from receiver.errors import ConfigError
from receiver.providers import PROVIDERS
from receiver.simulator.phase import Phase

if TYPE_CHECKING:
    pass

__all__ = ["register"]

# The receiver's answer -> the exit code (docs/operations.md); anything else is usage (2).
_EXIT_FOR = {404: EXIT_NOTHING, 503: EXIT_STORE}


def register(commands: Any) -> None:
    trigger = commands.add_parser(
        "trigger", help="send one realistic provider callback for a job to a running receiver"
    )
    common_options(trigger)
    trigger.add_argument("provider", choices=sorted(PROVIDERS), help="the job's provider")
    trigger.add_argument(
        "status", choices=[phase.value for phase in Phase], help="the status to report"
    )
    trigger.add_argument("--job", required=True, metavar="ID", help="the job's id")
    trigger.add_argument("--progress", type=float, help="progress 0..1 (for running)")
    trigger.add_argument("--result-url", help="result URL (default: media on the simulator)")
    trigger.add_argument("--preview-url", help="preview URL (default: media on the simulator)")
    trigger.add_argument(
        "--wrapped", action="store_true", help="rixapi: the {code, msg, data} form"
    )
    trigger.add_argument(
        "--url", help="the running receiver (default http://RECEIVER_HOST:RECEIVER_PORT)"
    )
    trigger.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="keep trying a receiver that is still starting for this long (default 10)",
    )
    setting(trigger, "--admin-token", "RECEIVER_ADMIN_TOKEN", "admin token (default: token file)")
    trigger.add_argument("--json", action="store_true", help="print the answer as JSON")
    trigger.set_defaults(run=run)


def _admin_token(settings: Settings) -> str:
    """RECEIVER_ADMIN_TOKEN, or the one `serve` generated beside the database (never made here)."""
    token = stored_admin_token(settings)
    if token is None:
        path = admin_token_file(settings)
        raise ConfigError(f"no RECEIVER_ADMIN_TOKEN and no token file at {path}")
    return token


def _receiver_url(args: argparse.Namespace, settings: Settings) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    return local_url(settings.host, settings.port)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    url = _receiver_url(args, settings)
    body = {
        "provider": args.provider,
        "status": args.status,
        "progress": args.progress,
        "result_url": args.result_url,
        "preview_url": args.preview_url,
        "wrapped": args.wrapped,
    }
    headers = {"Authorization": f"Bearer {_admin_token(settings)}"}
    import httpx

    try:
        response = httpx.post(
            f"{url}/jobs/{args.job}/trigger",
            json={key: value for key, value in body.items() if value is not None},
            headers=headers,
            timeout=30,
        )
    except httpx.HTTPError as exc:
        print(
            f"receiver: cannot reach the receiver at {url}: {type(exc).__name__}", file=sys.stderr
        )
        return EXIT_STORE
    try:
        answer = response.json()
    except ValueError:
        answer = {"error": response.text[:200]}
    if response.status_code != 200:
        detail = answer.get("error") or answer.get("detail") or ""
        print(f"receiver: {response.status_code} {detail}".rstrip(), file=sys.stderr)
        return _EXIT_FOR.get(response.status_code, EXIT_USAGE)
    if args.json:
        print_json(answer)
    else:
        ran = ", ".join(answer["handlers"]) or "none"
        print(
            f"{answer['job_id']}  {answer['status']}  event {answer['event_id']}"
            f" ({answer['disposition']}; handlers: {ran})"
        )
    return EXIT_OK
