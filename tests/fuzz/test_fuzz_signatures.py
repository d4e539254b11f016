"""Fuzzing Standard Webhooks verification: it accepts only a genuine signature, and fails only
with SignatureError, whatever the headers hold."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st
from tally import answered, count, examples

from receiver.standard_webhooks import SignatureError, sign, verify

CASES = examples(3000)
NOW = 1_800_000_000
KEYS = [bytes([n]) * 32 for n in range(1, 4)]
SECRETS = ["whsec_" + base64.b64encode(key).decode() for key in KEYS]
OTHER = "whsec_" + base64.b64encode(b"\x99" * 32).decode()

# Header values as the app gets them: bytes decoded as latin-1 (so never a surrogate).
HEADER_TEXT = st.one_of(
    st.binary(max_size=40).map(lambda raw: raw.decode("latin-1")),
    st.sampled_from(["v1,", "v1,=", "v2,abc", "v1,not base64!", "v1," + "A" * 44, ","]),
)
STAMPS = st.one_of(
    *[st.integers(NOW - 400, NOW + 400).map(str)] * 4,
    st.sampled_from(["", "0", "-1", " 1800000000", "1800000000.5", "\xb2\xb3", "9" * 13, "0x1"]),
    HEADER_TEXT,
)


@st.composite
def signed_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str], bool]:
    """A body and headers, and whether a key we hold genuinely signed them (unaltered)."""
    body = draw(st.binary(max_size=200))
    msg_id = draw(st.one_of(st.sampled_from(["msg_1", ""]), HEADER_TEXT))
    stamp = draw(STAMPS)
    signer = draw(st.sampled_from([*SECRETS, *SECRETS, OTHER, None]))
    signatures = draw(st.lists(HEADER_TEXT, max_size=3))
    genuine = False
    if signer is not None and stamp.isascii() and stamp.isdigit() and len(stamp) <= 12:
        try:
            signatures.insert(
                draw(st.integers(0, len(signatures))), sign(signer, msg_id, int(stamp), body)
            )
            genuine = signer != OTHER
        except UnicodeEncodeError:
            pass
    tamper = draw(st.sampled_from([None, None, None, None, "body", "id", "stamp"]))
    if tamper == "body":
        body += b"x"
    elif tamper == "id":
        msg_id += "x"
    elif tamper == "stamp":
        stamp = stamp + "0"
    separator = draw(st.sampled_from([" ", "  ", "\t"]))
    # A genuine signature glued to another by a tab is not one the specification reads.
    genuine = genuine and tamper is None and (separator != "\t" or len(signatures) == 1)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": stamp,
        "webhook-signature": separator.join(signatures),
    }
    return body, headers, genuine


class TestVerifyFuzz:
    """verify returns the message id only for a genuine, timely signature."""

    @settings(settings.get_profile("fuzz"), max_examples=CASES)
    @given(request=signed_requests(), keys=st.permutations(KEYS))
    def test_verify(self, request: tuple[bytes, dict[str, str], bool], keys: list[bytes]) -> None:
        body, headers, genuine = request
        with count("standard_webhooks.verify"):
            try:
                msg_id = verify(body, headers, keys, now=NOW)
            except SignatureError:
                accepted = False
            else:
                accepted = True
                assert headers["webhook-id"] == msg_id
            answered("standard_webhooks.verify (200 = accepted)", 200 if accepted else 401)
            if accepted:
                assert genuine, "accepted a signature no key of ours made, or an altered message"
            elif genuine and headers["webhook-id"]:
                late = abs(int(headers["webhook-timestamp"]) - NOW) > 300
                assert late, "refused a genuine, timely signature"
