"""Generic (Standard Webhooks) providers: their settings, their signatures, and how bodies read."""

from __future__ import annotations

import base64
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from receiver.config import load_settings
from receiver.errors import ConfigError, ProviderError, UnparseablePayload
from receiver.models import Status
from receiver.providers import (
    CallbackStyle,
    GenericProvider,
    GenericSettings,
    ProviderSettings,
    generic_providers,
)
from receiver.providers.generic import STATUS_WORDS, split_secrets
from receiver.standard_webhooks import SignatureError
from receiver.testing import mock_gateway

SECRET = "whsec_" + base64.b64encode(b"acme-key-" + b"1" * 23).decode()
NEW_SECRET = "whsec_" + base64.b64encode(b"acme-key-" + b"2" * 23).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"someone-" + b"3" * 24).decode()
TASK_ID = "job_01HZX8Q6T1"


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in an empty directory, so no stray receiver.toml is picked up."""
    monkeypatch.chdir(tmp_path)


def adapter(**settings: Any) -> GenericProvider:
    settings.setdefault("webhook_secret", SECRET)
    made = generic_providers({"acme": GenericSettings(**settings)})["acme"]
    assert isinstance(made, GenericProvider)
    return made


def reference_headers(
    secret: str, msg_id: str, body: bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    """The three headers as the reference library (the `standardwebhooks` package) signs them."""
    stamp = int(time.time()) if timestamp is None else timestamp
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(stamp, tz=UTC), body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": signature,
    }


def config_error(environ: dict[str, str], config_file: Path | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ, config_file=config_file)
    return str(caught.value)


def envelope(data: dict[str, Any], type_: str = "job.updated") -> dict[str, Any]:
    return {"type": type_, "timestamp": "2026-11-22T01:00:00Z", "data": data}


class TestSettings:
    """Generic providers are declared by name, from variables or receiver.toml tables."""

    def test_declared_by_variables(self) -> None:
        """RECEIVER_GENERIC_PROVIDERS names them; RECEIVER_<NAME>_* configure each."""
        settings = load_settings(
            {
                "RECEIVER_GENERIC_PROVIDERS": "acme, Render",
                "RECEIVER_ACME_WEBHOOK_SECRET": SECRET,
                "RECEIVER_ACME_TOLERANCE": "60",
                "RECEIVER_ACME_STATUS_MAP": "rendered=succeeded, held = queued",
                "RECEIVER_RENDER_WEBHOOK_SECRET": f"{SECRET} {NEW_SECRET}",
            }
        )
        assert ["acme", "render"] == sorted(settings.generic)
        acme = settings.generic["acme"]
        assert (60.0, {"rendered": "succeeded", "held": "queued"}) == (
            acme.tolerance,
            acme.status_map,
        )
        assert 300.0 == settings.generic["render"].tolerance
        assert [SECRET, NEW_SECRET] == split_secrets(settings.generic["render"].webhook_secret)

    def test_declared_in_the_file_and_variables_win(self, tmp_path: Path) -> None:
        """A [generic.<name>] table declares one; its variables override the file."""
        path = tmp_path / "receiver.toml"
        path.write_text(
            f'[generic.acme]\nwebhook_secret = "{OTHER_SECRET}"\ntolerance = 120\n'
            'progress_scale = "percent"\n'
            '[generic.acme.status_map]\n"video.rendered" = "succeeded"\n'
        )
        settings = load_settings({"RECEIVER_ACME_WEBHOOK_SECRET": SECRET}, config_file=path)
        acme = settings.generic["acme"]
        assert (SECRET, 120.0, "percent") == (
            acme.webhook_secret,
            acme.tolerance,
            acme.progress_scale,
        )
        assert {"video.rendered": "succeeded"} == acme.status_map

    def test_generic_variables_are_not_reported_unknown(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The variables of a declared provider are read, not warned about."""
        with caplog.at_level(logging.WARNING, logger="receiver.config"):
            load_settings(
                {"RECEIVER_GENERIC_PROVIDERS": "acme", "RECEIVER_ACME_WEBHOOK_SECRET": SECRET}
            )
        assert [] == caplog.messages

    def test_gateway_settings_come_from_the_generic_table(self) -> None:
        """A generic provider's status API settings reach its gateway."""
        settings = load_settings(
            {
                "RECEIVER_GENERIC_PROVIDERS": "acme",
                "RECEIVER_ACME_WEBHOOK_SECRET": SECRET,
                "RECEIVER_ACME_BASE_URL": "https://api.acme.test",
                "RECEIVER_ACME_STATUS_PATH": "/v1/jobs/{task_id}",
                "RECEIVER_ACME_API_KEY": "k",
                "RECEIVER_ACME_DEADLINE": "90",
            }
        )
        assert ProviderSettings(base_url="https://api.acme.test", api_key="k", deadline=90) == (
            settings.provider("acme")
        )
        assert 90 == settings.deadline_for("acme")

    def test_none_by_default(self) -> None:
        """Without a declaration there are no generic providers."""
        assert {} == load_settings({}).generic


class TestSettingsErrors:
    """A generic provider that cannot work stops the start with a clear message."""

    def test_missing_secret(self) -> None:
        """A declared provider needs its secret."""
        message = config_error({"RECEIVER_GENERIC_PROVIDERS": "acme"})
        assert "RECEIVER_ACME_WEBHOOK_SECRET is required" in message

    @pytest.mark.parametrize(
        "bad",
        [
            "not-base64-at-all!",
            "whsec_" + base64.b64encode(b"short").decode(),
            "whsec_!!not~base64!!",
        ],
    )
    def test_bad_secret_is_named_and_never_echoed(self, bad: str) -> None:
        """The message says which secret is wrong, never what it is."""
        message = config_error(
            {
                "RECEIVER_GENERIC_PROVIDERS": "acme",
                "RECEIVER_ACME_WEBHOOK_SECRET": f"{SECRET},{bad}",
            }
        )
        assert "RECEIVER_ACME_WEBHOOK_SECRET: the 2nd secret" in message
        assert bad not in message and SECRET not in message

    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            ("apiframe", "clashes with the built-in provider"),
            ("bad-name", "must be a lower-case slug"),
            ("9lives", "must be a lower-case slug"),
            ("handler", "is reserved"),  # RECEIVER_HANDLER_TIMEOUT is the receiver's own
            ("generic", "is reserved"),
        ],
    )
    def test_names_must_be_free_slugs(self, name: str, expected: str) -> None:
        """Names are URL and variable parts: plain, and not anyone else's."""
        message = config_error(
            {
                "RECEIVER_GENERIC_PROVIDERS": name,
                f"RECEIVER_{name.upper()}_WEBHOOK_SECRET": SECRET,
            }
        )
        assert expected in message

    @pytest.mark.parametrize(
        ("variable", "value", "expected"),
        [
            ("TOLERANCE", "0", "RECEIVER_ACME_TOLERANCE must be more than 0"),
            ("DEADLINE", "-1", "RECEIVER_ACME_DEADLINE must be greater than 0"),
            ("POLL_CONCURRENCY", "0", "RECEIVER_ACME_POLL_CONCURRENCY must be at least 1"),
            ("TOLERANCE", "soon", "RECEIVER_ACME_TOLERANCE: Expected `float`"),
            ("STATUS_MAP", "rendered=done", "'rendered' maps to 'done', not one of"),
            ("STATUS_MAP", "rendered", "RECEIVER_ACME_STATUS_MAP: status map entry"),
            ("STATUS_PATH", "/v1/jobs/{task_id}", "needs RECEIVER_ACME_BASE_URL"),
            ("PROGRESS_SCALE", "tenths", "RECEIVER_ACME_PROGRESS_SCALE: Invalid enum value"),
        ],
    )
    def test_bad_values_name_their_variable(self, variable: str, value: str, expected: str) -> None:
        """Each unusable value is refused with the variable it came from."""
        message = config_error(
            {
                "RECEIVER_GENERIC_PROVIDERS": "acme",
                "RECEIVER_ACME_WEBHOOK_SECRET": SECRET,
                f"RECEIVER_ACME_{variable}": value,
            }
        )
        assert expected in message

    @pytest.mark.parametrize("path", ["v1/{task_id}", "/v1/jobs", "/v1/{task_id}/{other}"])
    def test_status_path_holds_the_task_id_once(self, path: str) -> None:
        """A status path is relative to the base URL and takes only the task id."""
        message = config_error(
            {
                "RECEIVER_GENERIC_PROVIDERS": "acme",
                "RECEIVER_ACME_WEBHOOK_SECRET": SECRET,
                "RECEIVER_ACME_BASE_URL": "https://api.acme.test",
                "RECEIVER_ACME_STATUS_PATH": path,
            }
        )
        assert "RECEIVER_ACME_STATUS_PATH" in message

    def test_unknown_key_in_a_table(self, tmp_path: Path) -> None:
        """A misspelt setting in a [generic.<name>] table is named."""
        path = tmp_path / "receiver.toml"
        path.write_text(f'[generic.acme]\nwebhook_secret = "{SECRET}"\ntolerence = 5\n')
        assert "RECEIVER_ACME_TOLERENCE: unknown setting" == config_error({}, path)

    def test_generic_must_be_tables(self, tmp_path: Path) -> None:
        """`generic = "acme"` in the file is not a declaration."""
        path = tmp_path / "receiver.toml"
        path.write_text('generic = "acme"\n')
        assert "[generic.<name>]" in config_error({}, path)


class TestAuthenticate:
    """Signatures are checked as the specification says, against the reference library."""

    BODY = b'{"type": "job.succeeded", "data": {"id": "job_01HZX8Q6T1"}}'

    def test_reference_signature_yields_the_webhook_id(self) -> None:
        """A message the reference library signed is genuine; its id comes back."""
        headers = reference_headers(SECRET, "msg_2fX", self.BODY)
        assert "msg_2fX" == adapter().authenticate(self.BODY, headers)

    def test_any_configured_secret_verifies(self) -> None:
        """During a rotation both the old and the new secret are accepted."""
        rotating = adapter(webhook_secret=f"{SECRET}, {NEW_SECRET}")
        for secret in (SECRET, NEW_SECRET):
            headers = reference_headers(secret, "msg_r", self.BODY)
            assert "msg_r" == rotating.authenticate(self.BODY, headers)
        with pytest.raises(SignatureError):
            rotating.authenticate(self.BODY, reference_headers(OTHER_SECRET, "m", self.BODY))

    def test_any_offered_signature_may_match(self) -> None:
        """A sender mid-rotation sends two signatures; one that matches is enough."""
        stamp = int(time.time())
        theirs = reference_headers(OTHER_SECRET, "msg_2", self.BODY, timestamp=stamp)
        ours = reference_headers(SECRET, "msg_2", self.BODY, timestamp=stamp)
        headers = {
            **ours,
            "webhook-signature": f"{theirs['webhook-signature']} {ours['webhook-signature']}",
        }
        assert "msg_2" == adapter().authenticate(self.BODY, headers)

    def test_tampered_and_reserialized_bodies_fail(self) -> None:
        """Only the exact bytes that were signed verify, not the same JSON written differently."""
        headers = reference_headers(SECRET, "msg_3", self.BODY)
        for body in (self.BODY.replace(b"succeeded", b"failed"), self.BODY.replace(b": ", b":")):
            with pytest.raises(SignatureError):
                adapter().authenticate(body, headers)

    @pytest.mark.parametrize("offset", [-301, 301])
    def test_timestamp_tolerance_both_ways(self, offset: int) -> None:
        """A message older or newer than the tolerance fails, though rightly signed."""
        stamp = int(time.time()) + offset
        headers = reference_headers(SECRET, "msg_4", self.BODY, timestamp=stamp)
        with pytest.raises(SignatureError):
            adapter().authenticate(self.BODY, headers)
        assert "msg_4" == adapter(tolerance=400).authenticate(self.BODY, headers)


class TestParse:
    """The Standard Webhooks envelope is read into the canonical update."""

    def test_succeeded_by_type(self) -> None:
        """`type` says the status when `data` has none; the result URL is kept."""
        body = envelope(
            {"id": TASK_ID, "output_url": "https://cdn.acme.test/v.mp4"}, "job.succeeded"
        )
        update = adapter().parse_callback(body)
        assert (Status.SUCCEEDED, "job.succeeded", TASK_ID, 1.0) == (
            update.status,
            update.raw_status,
            update.task_id,
            update.progress,
        )
        assert "https://cdn.acme.test/v.mp4" == update.result_url
        assert body == update.payload

    @pytest.mark.parametrize(
        ("word", "expected"),
        [
            ("completed", Status.SUCCEEDED),
            ("success", Status.SUCCEEDED),
            ("done", Status.SUCCEEDED),
            ("processing", Status.RUNNING),
            ("in_progress", Status.RUNNING),
            ("In-Progress", Status.RUNNING),
            ("started", Status.RUNNING),
            ("pending", Status.QUEUED),
            ("submitted", Status.QUEUED),
            ("error", Status.FAILED),
            ("failure", Status.FAILED),
            ("canceled", Status.CANCELLED),
            ("cancelled", Status.CANCELLED),
        ],
    )
    def test_status_synonyms(self, word: str, expected: Status) -> None:
        """Common status words map to the canonical ones; the word is kept as the raw status."""
        update = adapter().parse_callback(envelope({"task_id": TASK_ID, "status": word}))
        assert (expected, word) == (update.status, update.raw_status)

    def test_every_canonical_status_is_its_own_word(self) -> None:
        """The canonical names need no mapping."""
        assert all(STATUS_WORDS[status.value] is status for status in Status)

    def test_status_map_comes_first(self) -> None:
        """A per-provider map names words the table does not know, or overrides it."""
        mapped = adapter(status_map={"rendered": "succeeded", "done": "running"})
        assert (
            Status.SUCCEEDED
            == mapped.parse_callback(envelope({"id": "t", "status": "rendered"})).status
        )
        assert (
            Status.RUNNING == mapped.parse_callback(envelope({"id": "t", "status": "done"})).status
        )
        by_type = adapter(status_map={"video.rendered": "succeeded"})
        assert (
            Status.SUCCEEDED
            == by_type.parse_callback(envelope({"id": "t"}, "video.rendered")).status
        )

    def test_data_status_wins_over_type(self) -> None:
        """`data.status` is more precise than the event type."""
        update = adapter().parse_callback(envelope({"id": "t", "status": "failed"}, "job.updated"))
        assert Status.FAILED == update.status

    def test_task_id_is_preferred_over_id(self) -> None:
        """`data.task_id` names the task when the object's own id is something else."""
        update = adapter().parse_callback(
            envelope({"id": "evt_1", "task_id": TASK_ID, "status": "running"})
        )
        assert TASK_ID == update.task_id

    def test_numeric_task_id(self) -> None:
        """A numeric id is read as its text."""
        assert (
            "4711" == adapter().parse_callback(envelope({"id": 4711, "status": "queued"})).task_id
        )

    @pytest.mark.parametrize(
        ("value", "scale", "expected"),
        [
            (40, "auto", 0.4),
            ("40%", "auto", 0.4),
            (0.25, "auto", 0.25),
            (1, "fraction", 1.0),
            (1, "auto", 0.01),
            (0.5, "percent", 0.005),
            ("n/a", "auto", None),
        ],
    )
    def test_progress(self, value: Any, scale: str, expected: float | None) -> None:
        """Progress is a fraction 0..1, read from 0..1 or 0..100 as configured or guessed."""
        body = envelope({"id": "t", "status": "running", "progress": value})
        assert expected == adapter(progress_scale=scale).parse_callback(body).progress

    def test_failure_keeps_message_and_code(self) -> None:
        """A failed task's error object becomes the error message and code."""
        body = envelope(
            {"id": "t", "status": "failed", "error": {"message": "NSFW prompt", "code": "E42"}}
        )
        update = adapter().parse_callback(body)
        assert (Status.FAILED, "NSFW prompt", "E42") == (
            update.status,
            update.error,
            update.error_code,
        )

    def test_error_text_only_on_failure(self) -> None:
        """A message on a running task is not an error."""
        body = envelope({"id": "t", "status": "running", "message": "warming up"})
        assert None is adapter().parse_callback(body).error

    def test_preview(self) -> None:
        """A thumbnail is the preview."""
        body = envelope({"id": "t", "status": "running", "thumbnail_url": "https://c/t.jpg"})
        assert "https://c/t.jpg" == adapter().parse_callback(body).preview_url

    def test_body_without_envelope(self) -> None:
        """A sender that does not wrap its fields in `data` is read from the top level."""
        update = adapter().parse_callback({"id": TASK_ID, "status": "done"})
        assert (Status.SUCCEEDED, TASK_ID) == (update.status, update.task_id)

    @pytest.mark.parametrize(
        "body",
        [
            envelope({"id": "t"}),  # job.updated says nothing about the status
            envelope({"id": "t", "status": "levitating"}),
            envelope({"id": "t", "status": 3}),
            envelope({"status": "done"}),
            envelope({"id": "../../admin", "status": "done"}),
            envelope({"id": "x" * 200, "status": "done"}),
            envelope({"id": ["t"], "status": "done"}),
            {"type": "job.succeeded", "data": "t"},
            {},
        ],
    )
    def test_unusable_bodies(self, body: dict[str, Any]) -> None:
        """No known status or no plain task id: UnparseablePayload, which the route answers 400."""
        with pytest.raises(UnparseablePayload):
            adapter().parse_callback(body)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_FIELDS = st.sampled_from(["id", "task_id", "status", "progress", "error", "url", "data", "type"])


_FUZZED = generic_providers({"acme": GenericSettings(webhook_secret=SECRET)})["acme"]


class TestParseFuzz:
    """Whatever a (genuinely signed) body holds, it reads as an Update or a clean refusal."""

    @settings(max_examples=300, deadline=None)
    @given(
        body=st.dictionaries(_FIELDS | st.text(max_size=8), _JSON, max_size=6),
        data=st.dictionaries(_FIELDS, _JSON, max_size=6),
        wrap=st.booleans(),
    )
    def test_any_object(self, body: dict[str, Any], data: dict[str, Any], wrap: bool) -> None:
        """Only UnparseablePayload escapes, and what is read has a plain task id and a fraction."""
        if wrap:
            body = {**body, "data": data}
        try:
            update = _FUZZED.parse_callback(body)
        except UnparseablePayload:
            return
        assert update.task_id is not None and len(update.task_id) <= 128
        assert update.progress is None or 0.0 <= update.progress <= 1.0


class TestStatusApi:
    """An optional status API lets the poller ask about a task."""

    async def test_pull(self) -> None:
        """GET base URL + status path with the task id and the bearer key, read like a callback."""
        acme = adapter(base_url="https://api.acme.test", status_path="/v1/jobs/{task_id}")
        answer = {"data": {"id": TASK_ID, "status": "processing", "progress": 50}}
        async with mock_gateway(acme, answer, base_url="https://api.acme.test") as (gw, sent):
            update = await gw.pull(TASK_ID)
        assert (Status.RUNNING, 0.5, TASK_ID) == (update.status, update.progress, update.task_id)
        [request] = sent
        assert ("GET", f"https://api.acme.test/v1/jobs/{TASK_ID}") == (
            request.method,
            str(request.url),
        )
        assert "Bearer test-key" == request.headers["authorization"]
        assert acme.can_pull

    async def test_pull_without_a_key_sends_no_authorization(self) -> None:
        """A generic provider's key is optional: without one it is pulled all the same."""
        acme = adapter(base_url="https://api.acme.test", status_path="/jobs/{task_id}")
        async with mock_gateway(acme, {"status": "done"}, api_key="") as (gw, sent):
            await gw.pull(TASK_ID)
        assert None is gw.missing_setting()
        assert "authorization" not in sent[0].headers

    async def test_answer_without_id_is_about_the_asked_task(self) -> None:
        """A status answer need not repeat the task id."""
        acme = adapter(base_url="https://api.acme.test", status_path="/jobs/{task_id}")
        async with mock_gateway(acme, {"status": "done"}) as (gw, _):
            assert TASK_ID == (await gw.pull(TASK_ID)).task_id

    def test_no_status_api_by_default(self) -> None:
        """Without a status path there is nothing to pull, and no job is polled."""
        acme = adapter()
        assert (False, None) == (acme.can_pull, acme.status_request(TASK_ID))

    def test_cannot_submit(self) -> None:
        """Jobs of a generic provider are created by the sender, never by us."""
        with pytest.raises(ProviderError):
            adapter().create_request({}, hook_url=None, webhook_secret=None)

    def test_names_and_style(self) -> None:
        """Each configured provider answers to its own name and signs its posts."""
        made = generic_providers(
            {
                "acme": GenericSettings(webhook_secret=SECRET),
                "b2": GenericSettings(webhook_secret=SECRET),
            }
        )
        assert ["acme", "b2"] == [made[name].name for name in ("acme", "b2")]
        assert CallbackStyle.SIGNED_POST == made["acme"].callback_style
