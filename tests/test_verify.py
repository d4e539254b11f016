"""Credentials: minting, hashing, constant-time matching and redaction."""

from __future__ import annotations

import string
from typing import Any

import pytest

from receiver.verify import (
    REDACTED,
    digest,
    matches,
    matches_any,
    mint_secret,
    mint_token,
    redact_fields,
    redact_headers,
    redact_path,
    redact_query,
)

_URLSAFE = set(string.ascii_letters + string.digits + "-_")
_HEX = set(string.hexdigits.lower())


class TestMinting:
    """Tokens and secrets carry at least 128 bits of entropy in an alphabet every provider takes."""

    def test_token_is_long_and_url_safe(self) -> None:
        """A token is 43 URL-safe base64 characters: 256 bits."""
        token = mint_token()
        assert 43 == len(token)
        assert set(token) <= _URLSAFE
        assert len(token) * 6 >= 128

    def test_secret_is_long_hex(self) -> None:
        """A secret is 64 lowercase hex characters: 256 bits."""
        secret = mint_secret()
        assert 64 == len(secret)
        assert set(secret) <= _HEX
        assert len(secret) * 4 >= 128

    def test_values_do_not_repeat(self) -> None:
        """Each call mints a fresh value."""
        assert 50 == len({mint_token() for _ in range(50)})
        assert 50 == len({mint_secret() for _ in range(50)})


class TestDigest:
    """The stored form of a credential is a stable SHA-256 hex digest."""

    def test_known_value(self) -> None:
        """The digest is plain SHA-256 of the UTF-8 text, so it survives restarts and upgrades."""
        assert "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" == digest("hello")

    def test_stable_and_distinct(self) -> None:
        """The same value always digests the same; different values differ."""
        token = mint_token()
        assert digest(token) == digest(token)
        assert digest(token) != digest(token + "x")
        assert token not in digest(token)


class TestMatches:
    """`matches` compares a candidate against a stored digest; missing values never match."""

    def test_right_candidate_matches(self) -> None:
        """The value whose digest is stored matches."""
        secret = mint_secret()
        assert matches(secret, digest(secret)) is True

    def test_wrong_candidate_does_not_match(self) -> None:
        """Any other value does not."""
        assert matches("guess", digest(mint_secret())) is False

    def test_missing_candidate_does_not_match(self) -> None:
        """A request without the secret is not authenticated."""
        assert matches(None, digest("x")) is False

    def test_missing_or_empty_digest_matches_nothing(self) -> None:
        """A job without a stored secret accepts no secret at all, not even an empty one."""
        assert matches("x", None) is False
        assert matches("", "") is False


class TestMatchesAny:
    """`matches_any` accepts a candidate equal to any configured secret, for key rotation."""

    def test_any_of_several_secrets(self) -> None:
        """The old and the new secret both match during a rotation."""
        assert matches_any("new", ["old", "new"]) is True
        assert matches_any("old", ["old", "new"]) is True

    def test_no_match(self) -> None:
        """A value equal to none of them is refused."""
        assert matches_any("other", ["old", "new"]) is False

    def test_missing_values_never_match(self) -> None:
        """No candidate, no secrets, or unset secrets match nothing."""
        assert matches_any(None, ["old"]) is False
        assert matches_any("old", []) is False
        assert matches_any("", [None, ""]) is False
        assert matches_any("old", [None, "old"]) is True


class TestRedaction:
    """Redaction hides credentials but keeps enough to correlate rows."""

    def test_secret_headers_are_hidden_whatever_their_case(self) -> None:
        """Credential headers are replaced; others are kept as they were."""
        headers = {
            "X-Webhook-Secret": "s3cret",
            "authorization": "Bearer abc",
            "Cookie": "sid=1",
            "X-API-Key": "k",
            "Proxy-Authorization": "Basic xyz",
            "Content-Type": "application/json",
            "X-Request-Id": "req-1",
        }
        redacted = redact_headers(headers)
        assert {
            "X-Webhook-Secret": REDACTED,
            "authorization": REDACTED,
            "Cookie": REDACTED,
            "X-API-Key": REDACTED,
            "Proxy-Authorization": REDACTED,
            "Content-Type": "application/json",
            "X-Request-Id": "req-1",
        } == redacted
        assert "s3cret" == headers["X-Webhook-Secret"]

    @pytest.mark.parametrize(
        "name",
        [
            "x_webhook_secret",
            "X_WEBHOOK_SECRET",
            "x-Webhook_Secret",
            "x_api_key",
            "X-Api_Key",
            "proxy_authorization",
            "webhook_signature",
            "set_cookie",
        ],
    )
    def test_secret_headers_are_hidden_however_they_are_spelt(self, name: str) -> None:
        """`_` for `-` and any case are one name: a credential header is hidden in each spelling."""
        assert {name: REDACTED, "x-request-id": "req-1"} == redact_headers(
            {name: "s3cret", "x-request-id": "req-1"}
        )

    def test_credentials_inside_lists_are_hidden(self) -> None:
        """A secret in an object inside a list, at any depth, is replaced; the rest is kept."""
        fields = {
            "prompt": "a cat",
            "hooks": [{"url": "https://x/", "webhook_secret": "s3cret"}, "plain", 3],
            "deep": {"list": [[{"X-Api-Key": "k3y", "ok": [1, {"token": "t0k"}]}]]},
        }
        assert {
            "prompt": "a cat",
            "hooks": [{"url": "https://x/", "webhook_secret": REDACTED}, "plain", 3],
            "deep": {"list": [[{"X-Api-Key": REDACTED, "ok": [1, {"token": REDACTED}]}]]},
        } == redact_fields(fields)
        assert "s3cret" == fields["hooks"][0]["webhook_secret"]  # type: ignore[index]

    def test_field_names_follow_the_same_rule_as_headers(self) -> None:
        """`api-key`, `API_KEY` and `apikey` are all credentials in a payload too."""
        fields = {"api-key": "a", "API_KEY": "b", "apikey": "c", "Webhook-Secret": "d", "id": 1}
        assert {
            "api-key": REDACTED,
            "API_KEY": REDACTED,
            "apikey": REDACTED,
            "Webhook-Secret": REDACTED,
            "id": 1,
        } == redact_fields(fields)

    def test_a_value_nested_deeper_than_the_stack_is_redacted(self) -> None:
        """Nesting far past Python's recursion limit is walked, not a RecursionError."""
        top: dict[str, object] = {}
        inner = top
        for _ in range(5000):
            child: dict[str, object] = {}
            inner["next"] = [child]
            inner = child
        inner["secret"] = "s3cret"
        found: Any = redact_fields(top)
        for _ in range(5000):
            found = found["next"][0]
        assert {"secret": REDACTED} == found

    def test_path_token_becomes_a_short_digest(self) -> None:
        """`/hooks/p/<token>` keeps the provider and a digest prefix of the token, not the token."""
        token = mint_token()
        redacted = redact_path(f"/hooks/apiframe/{token}")
        assert f"/hooks/apiframe/[token:{digest(token)[:12]}]" == redacted
        assert token not in redacted

    def test_same_token_redacts_the_same_way(self) -> None:
        """Two requests for one job can be correlated; two jobs can be told apart."""
        one, two = mint_token(), mint_token()
        assert redact_path(f"/hooks/rixapi/{one}") == redact_path(f"/hooks/rixapi/{one}")
        assert redact_path(f"/hooks/rixapi/{one}") != redact_path(f"/hooks/rixapi/{two}")

    def test_paths_without_a_token_are_kept(self) -> None:
        """The static route and other paths have nothing to hide."""
        assert "/hooks/apiframe" == redact_path("/hooks/apiframe")
        assert "/jobs/job_1" == redact_path("/jobs/job_1")

    def test_credential_query_values_are_hidden(self) -> None:
        """Values named like credentials are replaced, whatever their case; the rest is kept."""
        query = "uuid=abc-123&token=t0k&Secret=s&key=k&api_key=a&signature=sig&page=2"
        assert (
            f"uuid=abc-123&token={REDACTED}&Secret={REDACTED}&key={REDACTED}"
            f"&api_key={REDACTED}&signature={REDACTED}&page=2"
        ) == redact_query(query)

    @pytest.mark.parametrize("name", ["access_token", "webhook_secret", "apikey"])
    def test_common_credential_names_are_hidden(self, name: str) -> None:
        """Other usual credential names are hidden too, not only the five exact ones."""
        redacted = redact_query(f"uuid=abc&{name}=hunter2")
        assert f"uuid=abc&{name}={REDACTED}" == redacted

    def test_query_without_credentials_is_unchanged(self) -> None:
        """A nudge's uuid is kept: it is the correlation, not a credential."""
        assert "uuid=abc-123" == redact_query("uuid=abc-123")
        assert "" == redact_query("")
