"""Building on the built-in handlers (receiver.builtins) in your own handlers module.

Not loaded by default: try it with `RECEIVER_HANDLERS=handlers.examples`. The built-ins
themselves need no code (see docs/builtins.md); these show how their
parts serve a need the settings do not cover.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from receiver import Event, Job, on
from receiver.builtins.download import fetch_file
from receiver.builtins.forward import send_signed
from receiver.builtins.settings import DownloadSettings
from receiver.egress import Egress

# One downstream per customer, each with its own Standard Webhooks secret.
CUSTOMER_HOOKS = {
    "acme": ("https://hooks.acme.example/video", os.environ.get("ACME_WHSEC", "")),
}
_client = httpx.AsyncClient(follow_redirects=False)
_egress = Egress()  # result URLs are the provider's choice: public addresses only


@on(["succeeded", "failed"], when=lambda event, job: job.metadata.get("customer") in CUSTOMER_HOOKS)
async def forward_per_customer(event: Event, job: Job) -> None:
    """Forward, signed, to the customer named in the job's metadata (a 3xx or 5xx retries)."""
    url, secret = CUSTOMER_HOOKS[job.metadata["customer"]]
    await send_signed(_client, url, secret, event, job, timeout=10)


@on("succeeded", provider="runway_ai")
async def keep_thumbnails(event: Event, job: Job) -> None:
    """Keep images from runway_ai's image endpoints in a folder of their own, size-capped."""
    if event.result_url and event.result_url.endswith((".jpg", ".png")):
        settings = DownloadSettings(max_bytes=20 * 1024 * 1024, content_types=["image/"])
        folder = Path(os.environ.get("THUMBNAILS", "thumbnails")) / job.id
        await fetch_file(_egress, event.result_url, folder, "thumbnail", settings)
