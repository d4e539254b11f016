"""Settings from receiver.toml and RECEIVER_* variables, and the errors a bad one gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.config import Settings, load_settings
from receiver.errors import ConfigError
from receiver.providers import ProviderSettings
from receiver.testing import TEST_ADMIN_TOKEN

ADMIN = "admin-" + "a" * 40
METRICS = "metrics-" + "m" * 40


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in an empty directory, so no stray receiver.toml is picked up."""
    monkeypatch.chdir(tmp_path)


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "receiver.toml"
    path.write_text(text)
    return path


def config_error(environ: dict[str, str], config_file: Path | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ, config_file=config_file)
    return str(caught.value)


class TestDefaults:
    """With no file and no variables, the receiver runs locally on a SQLite file."""

    def test_defaults(self) -> None:
        """The documented defaults apply."""
        settings = load_settings({})
        assert "sqlite:///./receiver.db" == settings.database_url
        assert "http://127.0.0.1:8000" == settings.public_url
        assert 8000 == settings.port
        assert "handlers" == settings.handlers
        assert None is settings.admin_token
        assert {} == settings.providers
        assert 10_000 == settings.quarantine_max_rows

    def test_unconfigured_provider_gets_default_settings(self) -> None:
        """A provider nobody configured still has usable (empty) settings."""
        assert ProviderSettings() == load_settings({}).provider("rixapi")

    def test_unrelated_variables_are_ignored(self) -> None:
        """Variables without the RECEIVER_ prefix change nothing."""
        assert Settings() == load_settings({"PORT": "1", "DATABASE_URL": "mysql://x"})


class TestSources:
    """receiver.toml is read first and RECEIVER_* variables win over it."""

    def test_variables_are_converted(self) -> None:
        """Each field is read from RECEIVER_<FIELD>, converted to its type."""
        settings = load_settings(
            {
                "RECEIVER_PORT": "9001",
                "RECEIVER_HANDLER_TIMEOUT": "2.5",
                "RECEIVER_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
                "RECEIVER_DATABASE_URL": "postgresql://db/receiver",
            }
        )
        assert (9001, 2.5, TEST_ADMIN_TOKEN, "postgresql://db/receiver") == (
            settings.port,
            settings.handler_timeout,
            settings.admin_token,
            settings.database_url,
        )

    def test_file_is_read(self, tmp_path: Path) -> None:
        """Top-level keys and provider tables come from the TOML file."""
        path = write_toml(
            tmp_path,
            'port = 9000\npublic_url = "https://hooks.example"\n'
            "[providers.apiframe]\n"
            'base_url = "https://api.apiframe.example"\napi_key = "file-key"\n',
        )
        settings = load_settings({}, config_file=path)
        assert 9000 == settings.port
        assert "https://hooks.example" == settings.public_url
        assert "https://api.apiframe.example" == settings.provider("apiframe").base_url
        assert "file-key" == settings.provider("apiframe").api_key

    def test_variables_override_the_file(self, tmp_path: Path) -> None:
        """A variable wins over the file, field by field, also inside a provider's table."""
        path = write_toml(
            tmp_path,
            'port = 9000\nhandlers = "mine"\n'
            "[providers.apiframe]\n"
            'base_url = "https://api.apiframe.example"\napi_key = "file-key"\n',
        )
        settings = load_settings(
            {"RECEIVER_PORT": "9100", "RECEIVER_APIFRAME_API_KEY": "env-key"}, config_file=path
        )
        assert 9100 == settings.port
        assert "mine" == settings.handlers
        assert "https://api.apiframe.example" == settings.provider("apiframe").base_url
        assert "env-key" == settings.provider("apiframe").api_key

    def test_receiver_config_names_the_file(self, tmp_path: Path) -> None:
        """RECEIVER_CONFIG points at a file other than ./receiver.toml."""
        path = tmp_path / "elsewhere.toml"
        path.write_text("port = 7000\n")
        assert 7000 == load_settings({"RECEIVER_CONFIG": str(path)}).port

    def test_receiver_toml_in_the_working_directory(self, tmp_path: Path) -> None:
        """Without RECEIVER_CONFIG, ./receiver.toml is read when it exists."""
        write_toml(tmp_path, "port = 7100\n")
        assert 7100 == load_settings({}).port

    def test_missing_named_file_is_an_error(self, tmp_path: Path) -> None:
        """A file asked for by name must exist."""
        message = config_error({}, config_file=tmp_path / "missing.toml")
        assert "missing.toml" in message


class TestProviderVariables:
    """RECEIVER_<PROVIDER>_<FIELD> configures one provider, including names with underscores."""

    def test_apiframe_base_url(self) -> None:
        """RECEIVER_APIFRAME_BASE_URL sets apiframe's base URL."""
        settings = load_settings({"RECEIVER_APIFRAME_BASE_URL": "https://sim.example/apiframe"})
        assert "https://sim.example/apiframe" == settings.provider("apiframe").base_url

    def test_runway_ai_api_key(self) -> None:
        """RECEIVER_RUNWAY_AI_API_KEY sets runway_ai's key, not a field of another provider."""
        settings = load_settings({"RECEIVER_RUNWAY_AI_API_KEY": "rw-key"})
        assert {"runway_ai"} == set(settings.providers)
        assert "rw-key" == settings.provider("runway_ai").api_key

    def test_webhook_secret_and_timeout(self) -> None:
        """Every provider field has its variable, converted to its type."""
        settings = load_settings(
            {"RECEIVER_RIXAPI_WEBHOOK_SECRET": "whs", "RECEIVER_RIXAPI_TIMEOUT": "4"}
        )
        assert ("whs", 4.0) == (
            settings.provider("rixapi").webhook_secret,
            settings.provider("rixapi").timeout,
        )


class TestErrors:
    """A bad setting gives a one-line ConfigError that names the variable to fix."""

    def test_bad_port(self) -> None:
        """RECEIVER_PORT=abc is named in the message."""
        message = config_error({"RECEIVER_PORT": "abc"})
        assert "RECEIVER_PORT" in message
        assert "\n" not in message

    def test_bad_provider_value_names_its_variable(self) -> None:
        """A bad per-provider value names RECEIVER_<PROVIDER>_<FIELD>."""
        message = config_error({"RECEIVER_APIFRAME_TIMEOUT": "soon"})
        assert "RECEIVER_APIFRAME_TIMEOUT" in message
        assert "\n" not in message

    def test_bad_public_url(self) -> None:
        """A public URL that is not http(s) is refused with its variable named."""
        message = config_error({"RECEIVER_PUBLIC_URL": "ftp://hooks.example"})
        assert "RECEIVER_PUBLIC_URL" in message
        assert "\n" not in message

    def test_bad_database_scheme_without_leaking_the_password(self) -> None:
        """An unsupported database scheme is named, but the URL's password is not echoed."""
        message = config_error({"RECEIVER_DATABASE_URL": "mysql://user:hunter2@db/receiver"})
        assert "RECEIVER_DATABASE_URL" in message
        assert "mysql" in message
        assert "hunter2" not in message

    @pytest.mark.parametrize(
        ("variable", "value"),
        [
            ("RECEIVER_HANDLER_TIMEOUT", "0"),
            ("RECEIVER_HANDLER_MAX_ATTEMPTS", "0"),
            ("RECEIVER_RETRY_BASE_DELAY", "-1"),
            ("RECEIVER_MAX_BODY_BYTES", "0"),
            ("RECEIVER_PORT", "99999"),
            ("RECEIVER_PORT", "0"),
            ("RECEIVER_RETRY_MAX_DELAY", "-1"),
            ("RECEIVER_POLL_MAX_INTERVAL", "-5"),
            ("RECEIVER_RETRY_AFTER", "-1"),
            ("RECEIVER_LOG_LEVEL", "LOUD"),
            ("RECEIVER_APIFRAME_TIMEOUT", "0"),
            ("RECEIVER_QUARANTINE_MAX_ROWS", "0"),
        ],
    )
    def test_out_of_range_numbers(self, variable: str, value: str) -> None:
        """Numbers that cannot work are refused, naming their variable."""
        assert variable in config_error({variable: value})

    @pytest.mark.parametrize("url", ["http://[::1", "ftp://files.example", "api.example.com"])
    def test_bad_provider_base_url_is_named_not_echoed(self, url: str) -> None:
        """An unusable base URL is refused at start, named but not shown (it may hold a secret)."""
        message = config_error({"RECEIVER_ARTVISUM_BASE_URL": url})
        assert "RECEIVER_ARTVISUM_BASE_URL" in message
        assert url not in message

    def test_unknown_key_in_the_file(self, tmp_path: Path) -> None:
        """A misspelt key in receiver.toml is reported, not silently ignored."""
        path = write_toml(tmp_path, "prot = 8000\n")
        message = config_error({}, config_file=path)
        assert "PROT" in message.upper()

    def test_unknown_provider_table(self, tmp_path: Path) -> None:
        """A provider table for an adapter that does not exist is refused."""
        path = write_toml(tmp_path, '[providers.nosuch]\napi_key = "k"\n')
        assert "nosuch" in config_error({}, config_file=path)

    def test_unreadable_toml(self, tmp_path: Path) -> None:
        """A TOML syntax error names the file."""
        path = write_toml(tmp_path, "port = = 1\n")
        assert "receiver.toml" in config_error({}, config_file=path)


class TestSecretsList:
    """Every configured secret is known, so the log filter can redact it."""

    def test_all_kinds_of_secret_are_listed(self) -> None:
        """Admin and metrics tokens, API keys, webhook secrets (each rotated one), the forward
        secret and the notify URL are listed; ordinary settings are not."""
        whsec = "whsec_" + "a" * 43 + "="
        other = "whsec_" + "b" * 43 + "="
        settings = load_settings(
            {
                "RECEIVER_ADMIN_TOKEN": ADMIN,
                "RECEIVER_METRICS_TOKEN": METRICS,
                "RECEIVER_APIFRAME_API_KEY": "af-key",
                "RECEIVER_APIFRAME_WEBHOOK_SECRET": "af-secret",
                "RECEIVER_GENERIC_PROVIDERS": "acme",
                "RECEIVER_ACME_WEBHOOK_SECRET": f"{whsec} {other}",
                "RECEIVER_FORWARD_SECRET": whsec,
                "RECEIVER_NOTIFY_URL": "https://hooks.slack.example/services/T/B/XYZ",
            },
            config_file=None,
        )
        assert {
            ADMIN,
            METRICS,
            "af-key",
            "af-secret",
            whsec,
            other,
            "https://hooks.slack.example/services/T/B/XYZ",
        } == set(settings.secrets())
