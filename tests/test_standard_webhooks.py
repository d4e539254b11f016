"""Standard Webhooks signing and verification, checked against the reference library."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from receiver.standard_webhooks import (
    SignatureError,
    decode_secret,
    headers_for,
    mint_whsec,
    sign,
    verify,
)

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OTHER = "whsec_" + base64.b64encode(b"o" * 32).decode()


class TestAgreesWithTheReference:
    """What we sign the reference library accepts, and what it signs we accept."""

    @given(body=st.binary(max_size=512).filter(lambda b: _utf8(b)), msg_id=st.text(min_size=1))
    def test_ours_verify_with_the_reference(self, body: bytes, msg_id: str) -> None:
        """The reference verifies our headers for any body and id."""
        msg_id = msg_id.replace(" ", "_")
        headers = headers_for(SECRET, msg_id, body)
        Webhook(SECRET).verify(body, headers, json_parse=False)

    def test_reference_signatures_verify_with_ours(self) -> None:
        """A signature made by the reference is accepted, and yields the webhook-id."""
        body = b'{"type":"job.succeeded","id":"j1"}'
        stamp = int(time.time())
        signature = Webhook(SECRET).sign(
            "msg_1", datetime.fromtimestamp(stamp, tz=UTC), body.decode()
        )
        headers = {
            "webhook-id": "msg_1",
            "webhook-timestamp": str(stamp),
            "webhook-signature": signature,
        }
        assert "msg_1" == verify(body, headers, [decode_secret(SECRET)])

    def test_reference_rejects_a_tampered_body(self) -> None:
        """One changed byte fails the reference too, so the test above can fail."""
        headers = headers_for(SECRET, "m", b'{"a":1}')
        with pytest.raises(WebhookVerificationError):
            Webhook(SECRET).verify(b'{"a":2}', headers, json_parse=False)


class TestVerify:
    """Verification follows the specification: headers, tolerance, rotation, raw bytes."""

    def test_raw_bytes_not_reserialized(self) -> None:
        """Whitespace is part of what is signed: the same JSON spaced differently fails."""
        headers = headers_for(SECRET, "m", b'{"a": 1}')
        with pytest.raises(SignatureError):
            verify(b'{"a":1}', headers, [decode_secret(SECRET)])

    @pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
    def test_each_header_is_required(self, missing: str) -> None:
        """Without any one of the three headers nothing verifies."""
        headers = headers_for(SECRET, "m", b"{}")
        del headers[missing]
        with pytest.raises(SignatureError, match="missing"):
            verify(b"{}", headers, [decode_secret(SECRET)])

    @pytest.mark.parametrize(("offset", "words"), [(-301, "too old"), (301, "future")])
    def test_timestamp_tolerance_both_ways(self, offset: int, words: str) -> None:
        """Five minutes either way is refused even with a valid signature; inside it passes."""
        now = time.time()
        late = headers_for(SECRET, "m", b"{}", timestamp=int(now) + offset)
        with pytest.raises(SignatureError, match=words):
            verify(b"{}", late, [decode_secret(SECRET)], now=now)
        inside = headers_for(SECRET, "m", b"{}", timestamp=int(now) + offset // 2)
        assert "m" == verify(b"{}", inside, [decode_secret(SECRET)], now=now)

    def test_sender_rotation_several_signatures(self) -> None:
        """A header carrying an old and a new signature passes with either key."""
        stamp = int(time.time())
        both = f"v1,{sign(OTHER, 'm', stamp, b'x').split(',')[1]} {sign(SECRET, 'm', stamp, b'x')}"
        headers = {"webhook-id": "m", "webhook-timestamp": str(stamp), "webhook-signature": both}
        assert "m" == verify(b"x", headers, [decode_secret(SECRET)])
        assert "m" == verify(b"x", headers, [decode_secret(OTHER)])

    def test_receiver_rotation_several_keys(self) -> None:
        """A receiver holding old and new secrets accepts a message signed with either."""
        keys = [decode_secret(OTHER), decode_secret(SECRET)]
        assert "m" == verify(b"x", headers_for(SECRET, "m", b"x"), keys)
        with pytest.raises(SignatureError):
            verify(b"x", headers_for(mint_whsec(), "m", b"x"), keys)

    @pytest.mark.parametrize("signature", ["v2,AAAA", "v1,not base64!", "v1", "", "v1," + "A" * 44])
    def test_malformed_signatures_fail_cleanly(self, signature: str) -> None:
        """Unknown versions and garbage never raise anything but SignatureError."""
        headers = {"webhook-id": "m", "webhook-timestamp": str(int(time.time()))}
        headers["webhook-signature"] = signature
        with pytest.raises(SignatureError):
            verify(b"x", headers, [decode_secret(SECRET)])

    @pytest.mark.parametrize("stamp", ["1e9", "-5", "١٢٣", "9" * 40, " 1"])
    def test_odd_timestamps_are_refused(self, stamp: str) -> None:
        """Only plain ASCII digits are a timestamp."""
        headers = {"webhook-id": "m", "webhook-timestamp": stamp, "webhook-signature": "v1,AA=="}
        with pytest.raises(SignatureError, match="Unix seconds"):
            verify(b"x", headers, [decode_secret(SECRET)])


class TestSvixHeaders:
    """Svix's header names verify as its own library reads them: one whole family at a time."""

    def _reference(self, msg_id: str, body: bytes, stamp: int) -> dict[str, str]:
        signature = Webhook(SECRET).sign(msg_id, datetime.fromtimestamp(stamp, tz=UTC), body)
        return {"svix-id": msg_id, "svix-timestamp": str(stamp), "svix-signature": signature}

    def test_reference_signature_under_svix_names(self) -> None:
        """The reference's signature sent as svix-* headers yields the svix-id."""
        headers = self._reference("msg_s", b"{}", int(time.time()))
        assert "msg_s" == verify(b"{}", headers, [decode_secret(SECRET)])

    def test_svix_family_is_read_first(self) -> None:
        """With both families complete, the svix-* one decides, as in Svix's library."""
        svix = self._reference("msg_s", b"{}", int(time.time()))
        standard = headers_for(OTHER, "msg_w", b"{}")
        assert "msg_s" == verify(b"{}", {**standard, **svix}, [decode_secret(SECRET)])
        with pytest.raises(SignatureError) as refused:
            verify(b"{}", {**standard, **svix}, [decode_secret(OTHER)])
        assert "bad_signature" == refused.value.reason

    def test_headers_from_two_families_are_missing_ones(self) -> None:
        """An id from one family and the rest from the other is no family at all."""
        headers = headers_for(SECRET, "m", b"{}")
        headers["svix-id"] = headers.pop("webhook-id")
        with pytest.raises(SignatureError, match="svix-timestamp, svix-signature") as refused:
            verify(b"{}", headers, [decode_secret(SECRET)])
        assert "missing_signature" == refused.value.reason


class TestReasons:
    """Each refusal names its cause, and a timestamp outside the window its skew."""

    @pytest.mark.parametrize(
        ("offset", "reason", "skew"),
        [(-301, "stale_signature", -301), (900, "future_signature", 900)],
    )
    def test_skewed_timestamps(self, offset: int, reason: str, skew: int) -> None:
        """Too old and too new are told apart, with the seconds off (negative: behind)."""
        now = float(int(time.time()))
        headers = headers_for(SECRET, "m", b"{}", timestamp=int(now) + offset)
        with pytest.raises(SignatureError) as refused:
            verify(b"{}", headers, [decode_secret(SECRET)], now=now)
        assert (reason, skew) == (refused.value.reason, refused.value.skew)

    def test_missing_bad_and_malformed(self) -> None:
        """A missing header, an unknown key and a non-numeric timestamp each have a reason."""
        headers = headers_for(SECRET, "m", b"{}")
        cases = [
            ({k: v for k, v in headers.items() if k != "webhook-signature"}, "missing_signature"),
            ({**headers, "webhook-timestamp": "soon"}, "bad_timestamp"),
            (headers_for(OTHER, "m", b"{}"), "bad_signature"),
        ]
        for given_headers, reason in cases:
            with pytest.raises(SignatureError) as refused:
                verify(b"{}", given_headers, [decode_secret(SECRET)])
            assert (reason, None) == (refused.value.reason, refused.value.skew)


class TestSecrets:
    """Secrets are decoded strictly and minted in the whsec_ form."""

    def test_minted_secret_works_with_the_reference(self) -> None:
        """A minted secret is usable by the reference library."""
        secret = mint_whsec()
        assert secret.startswith("whsec_")
        Webhook(secret).verify(b"{}", headers_for(secret, "m", b"{}"), json_parse=False)

    @pytest.mark.parametrize(
        "secret", ["whsec_***", "whsec_" + base64.b64encode(b"short").decode()]
    )
    def test_bad_secrets_are_refused(self, secret: str) -> None:
        """Non-base64 or too-short secrets are a configuration error, not a weak key."""
        with pytest.raises(ValueError):
            decode_secret(secret)


def _utf8(body: bytes) -> bool:
    # The reference decodes the body as text before signing; ours signs any bytes.
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True
