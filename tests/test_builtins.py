"""The built-in handlers (forward, notify, command) against real downstream servers and programs."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks
from downstream import Reply, downstream

from receiver.builtins import COMMAND_HANDLER, NOTIFY_HANDLER, forward_name
from receiver.config import load_settings
from receiver.dispatch import Registry
from receiver.errors import ConfigError
from receiver.standard_webhooks import mint_whsec
from receiver.testing import HandlerKit, KitJob, handler_kit


class TestForward:
    """Events are POSTed downstream as signed JSON that a Standard Webhooks library accepts."""

    async def test_reference_library_verifies_what_we_send(self, tmp_path: Path) -> None:
        """The standardwebhooks package verifies the post, whose id is the event id."""
        secret = mint_whsec()
        async with downstream() as down:
            env = {"RECEIVER_FORWARD_URLS": down.url + "/hook", "RECEIVER_FORWARD_SECRET": secret}
            async with handler_kit(tmp_path, handlers=Registry(), env=env) as kit:
                job = await kit.job("apiframe", metadata={"customer": "acme", "order": 7})
                assert 200 == (await kit.callback(job, "succeeded")).status_code
                runs = await kit.settle()
        assert [(forward_name(down.url + "/hook"), True)] == [(r.handler, r.done) for r in runs]
        [seen] = down.seen
        assert ("POST", "/hook") == (seen.method, seen.path)
        verified = standardwebhooks.Webhook(secret).verify(seen.body, seen.headers)
        assert "job.succeeded" == verified["type"]
        assert runs[0].event.id == seen.headers["webhook-id"] == verified["data"]["event"]["id"]
        assert {"customer": "acme", "order": 7} == verified["data"]["job"]["metadata"]
        assert "application/json" == seen.headers["content-type"]

    async def test_another_secret_does_not_verify(self, tmp_path: Path) -> None:
        """The signature is bound to the configured secret."""
        async with downstream() as down:
            env = {"RECEIVER_FORWARD_URLS": down.url, "RECEIVER_FORWARD_SECRET": mint_whsec()}
            async with handler_kit(tmp_path, handlers=Registry(), env=env) as kit:
                job = await kit.job("rixapi")
                await kit.callback(job, "succeeded")
                await kit.settle()
        with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
            standardwebhooks.Webhook(mint_whsec()).verify(down.seen[0].body, down.seen[0].headers)

    async def test_filters_on_status_provider_and_metadata(self, tmp_path: Path) -> None:
        """Only events passing every filter are forwarded."""
        async with downstream() as down:
            env = {
                "RECEIVER_FORWARD_URLS": down.url,
                "RECEIVER_FORWARD_SECRET": mint_whsec(),
                "RECEIVER_FORWARD_STATUSES": "succeeded,failed",
                "RECEIVER_FORWARD_PROVIDERS": "rixapi",
                "RECEIVER_FORWARD_METADATA": "customer=acme",
            }
            async with handler_kit(tmp_path, handlers=Registry(), env=env) as kit:
                wanted = await kit.job("rixapi", metadata={"customer": "acme"})
                other_customer = await kit.job("rixapi", metadata={"customer": "globex"})
                other_provider = await kit.job("apiframe", metadata={"customer": "acme"})
                for job in (wanted, other_customer, other_provider):
                    await kit.callback(job, "running")
                    await kit.callback(job, "succeeded")
                await kit.settle()
        bodies = [json.loads(seen.body) for seen in down.seen]
        assert [(wanted.id, "succeeded")] == [
            (body["data"]["job"]["id"], body["data"]["event"]["status"]) for body in bodies
        ]

    async def test_each_url_is_its_own_delivery(self, tmp_path: Path) -> None:
        """A failing downstream is retried alone; the healthy one is sent once."""
        answers = iter([500, 200])
        async with (
            downstream() as healthy,
            downstream(lambda seen: Reply(status=next(answers), body=b"busy")) as flaky,
        ):
            env = {
                "RECEIVER_FORWARD_URLS": f"{healthy.url},{flaky.url}",
                "RECEIVER_FORWARD_SECRET": mint_whsec(),
            }
            async with handler_kit(tmp_path, handlers=Registry(), env=env) as kit:
                job = await kit.job("apiframe")
                await kit.callback(job, "succeeded")
                runs = await kit.settle()
        attempts = {run.handler: (run.attempts, run.done) for run in runs}
        assert {
            forward_name(healthy.url): (1, True),
            forward_name(flaky.url): (2, True),
        } == attempts
        assert 1 == len(healthy.seen)
        assert 2 == len(flaky.seen)
        # The retry carries the same message id, so the downstream can drop a repeat.
        assert flaky.seen[0].headers["webhook-id"] == flaky.seen[1].headers["webhook-id"]

    async def test_redirects_are_not_followed(self, tmp_path: Path) -> None:
        """A 3xx is a failure; the Location is never requested."""
        async with downstream() as elsewhere:
            moved = Reply(status=302, headers={"location": elsewhere.url + "/stolen"})
            async with downstream(lambda seen: moved) as down:
                env = {"RECEIVER_FORWARD_URLS": down.url, "RECEIVER_FORWARD_SECRET": mint_whsec()}
                async with handler_kit(tmp_path, handlers=Registry(), env=env) as kit:
                    job = await kit.job("apiframe")
                    await kit.callback(job, "succeeded")
                    [run] = await kit.settle()
        assert ("dead", 3) == (run.state.value, run.attempts)
        assert run.error is not None and "answered 302" in run.error
        assert [] == elsewhere.seen

    async def test_a_huge_error_answer_is_read_only_in_part(self, tmp_path: Path) -> None:
        """The error kept from a downstream's answer is short, however long the answer."""
        big = Reply(status=500, body=b"x" * 5_000_000)
        async with downstream(lambda seen: big) as down:
            env = {
                "RECEIVER_FORWARD_URLS": down.url + "/?token=s3cr3t",
                "RECEIVER_FORWARD_SECRET": mint_whsec(),
                "RECEIVER_HANDLER_MAX_ATTEMPTS": "1",
            }
            async with handler_kit(tmp_path, handlers=Registry(), env=env) as kit:
                job = await kit.job("apiframe")
                await kit.callback(job, "succeeded")
                [run] = await kit.settle()
        assert run.error is not None
        assert len(run.error) < 400
        assert "s3cr3t" not in run.error  # the URL's query is never echoed


class TestNotify:
    """Final events become one line for a Slack- or Discord-compatible incoming webhook."""

    async def test_slack_shape_for_final_events_only(self, tmp_path: Path) -> None:
        """Slack gets `{"text"}` with the job and its result; a running event sends nothing."""
        async with downstream() as chat:
            env = {"RECEIVER_NOTIFY_URL": chat.url + "/services/T/B/x"}
            async with handler_kit(tmp_path, handlers=Registry(), env=env) as kit:
                job = await kit.job("rixapi")
                await kit.callback(job, "running")
                await kit.callback(job, "succeeded", result_url="https://cdn.test/v.mp4")
                runs = await kit.settle()
        assert [NOTIFY_HANDLER] == [run.handler for run in runs]
        [seen] = chat.seen
        body = json.loads(seen.body)
        assert ["text"] == list(body)
        assert f"job {job.id} (rixapi) succeeded: https://cdn.test/v.mp4" == body["text"]

    async def test_discord_shape_with_the_error(self, tmp_path: Path) -> None:
        """Discord gets `{"content"}`; a failure carries the provider's reason."""
        async with downstream() as chat:
            env = {"RECEIVER_NOTIFY_URL": chat.url, "RECEIVER_NOTIFY_FORMAT": "discord"}
            async with handler_kit(tmp_path, handlers=Registry(), env=env) as kit:
                job = await kit.job("apiframe")
                await kit.callback(job, "failed")
                await kit.settle()
        body = json.loads(chat.seen[0].body)
        assert ["allowed_mentions", "content"] == sorted(body)
        assert body["content"].startswith(f"job {job.id} (apiframe) failed: ")
        assert "content filter" in body["content"]


ZWSP = "\u200b"


async def _notified_failure(
    tmp_path: Path, reason: str, *, path: str = "", notify_format: str = "auto"
) -> tuple[KitJob, Any]:
    """Fail a rixapi job with `reason` and return it with the body notify posted for it."""
    async with downstream() as chat:
        env = {"RECEIVER_NOTIFY_URL": chat.url + path, "RECEIVER_NOTIFY_FORMAT": notify_format}
        async with handler_kit(tmp_path, handlers=Registry(), env=env) as kit:
            job = await kit.job("rixapi")
            await _failed_with(kit, job, reason)
            [run] = await kit.settle()
    assert run.done
    return job, json.loads(chat.seen[0].body)


class TestNotifyText:
    """A provider's text reaches the chat as text: no mention, no disguised link, one line."""

    async def test_slack_escapes_its_control_characters(self, tmp_path: Path) -> None:
        """`<!channel>`, `<@U…>` and `<http://…|click>` arrive escaped; `&` too; a plain
        broadcast and a Markdown link (Mattermost) are broken; a newline is a space."""
        reason = (
            "<!channel> @here <@U024BE7LH> <http://evil.example|click>"
            " [click](http://evil.example) a & b\nline two"
        )
        job, body = await _notified_failure(tmp_path, reason, path="/services/T/B/x")
        expected = (
            f"job {job.id} (rixapi) failed: &lt;!channel&gt; @{ZWSP}here &lt;@U024BE7LH&gt;"
            f" &lt;http://evil.example|click&gt; [click]{ZWSP}(http://evil.example)"
            " a &amp; b line two"
        )
        assert {"text": expected} == body

    async def test_discord_breaks_mentions_and_markdown_and_pings_nobody(
        self, tmp_path: Path
    ) -> None:
        """`@everyone`, `<@id>`, `[x](url)`, bold and spoilers arrive as plain text, and
        `allowed_mentions` lets no mention ping anyone."""
        reason = (
            "@everyone @here <@123456789012345678> <@&42> [click](http://evil.example/x)"
            " **bold** ||hidden||\n# big"
        )
        job, body = await _notified_failure(tmp_path, reason, notify_format="discord")
        expected = (
            f"job {job.id} (rixapi) failed: @{ZWSP}everyone @{ZWSP}here"
            r" \<@123456789012345678\> \<@&42\> \[click\](http://evil.example/x)"
            r" \*\*bold\*\* \|\|hidden\|\| # big"
        )
        assert {"content": expected, "allowed_mentions": {"parse": []}} == body

    async def test_discord_leaves_a_result_url_clickable(self, tmp_path: Path) -> None:
        """A plain result URL is not escaped, so the link it shows still works."""
        url = "https://cdn.test/v_1~a.mp4?x=1&y=2"
        async with downstream() as chat:
            env = {"RECEIVER_NOTIFY_URL": chat.url, "RECEIVER_NOTIFY_FORMAT": "discord"}
            async with handler_kit(tmp_path, handlers=Registry(), env=env) as kit:
                job = await kit.job("rixapi")
                await kit.callback(job, "succeeded", result_url=url)
                await kit.settle()
        body = json.loads(chat.seen[0].body)
        assert f"job {job.id} (rixapi) succeeded: {url}" == body["content"]


def _program(tmp_path: Path, code: str) -> str:
    """A Python program as a command line (the receiver splits it, no shell runs it)."""
    script = tmp_path / "program.py"
    script.write_text(code)
    return shlex.join([sys.executable, str(script)])


_RECORD = """
import json, os, sys
with open(sys.argv[1], "w") as out:
    json.dump({"argv": sys.argv[2:], "env": dict(os.environ)}, out)
"""


class TestCommand:
    """A program runs per event with the event in its arguments and EVENT_* variables."""

    async def test_arguments_and_environment(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Placeholders fill single arguments; the receiver's own secrets are not inherited."""
        monkeypatch.setenv("RECEIVER_ADMIN_TOKEN_FOR_TEST", "do-not-leak")
        record = tmp_path / "record.json"
        command = _program(tmp_path, _RECORD) + f" {record} {{job_id}} {{status}}"
        command += " '{metadata.customer} and more' '{result_url}'"
        async with handler_kit(
            tmp_path, handlers=Registry(), env={"RECEIVER_COMMAND": command}
        ) as kit:
            job = await kit.job("rixapi", metadata={"customer": "a b; rm -rf /"})
            await kit.callback(job, "succeeded", result_url="https://cdn.test/v.mp4")
            [run] = await kit.settle()
        assert (COMMAND_HANDLER, True) == (run.handler, run.done)
        seen = json.loads(record.read_text())
        assert [
            job.id,
            "succeeded",
            "a b; rm -rf / and more",
            "https://cdn.test/v.mp4",
        ] == seen["argv"]
        env = seen["env"]
        assert (job.id, "succeeded", "rixapi") == (
            env["EVENT_JOB_ID"],
            env["EVENT_STATUS"],
            env["EVENT_PROVIDER"],
        )
        assert {"customer": "a b; rm -rf /"} == json.loads(env["EVENT_METADATA"])
        assert "job.succeeded" == json.loads(env["EVENT_JSON"])["type"]
        assert run.delivery_id == env["EVENT_DELIVERY_ID"]
        assert not [name for name in env if name.startswith("RECEIVER_")]

    async def test_non_zero_exit_is_retried_then_dead(self, tmp_path: Path) -> None:
        """Exit code 3 fails the delivery, with the program's last output in the error."""
        command = _program(tmp_path, "import sys; print('disk full'); sys.exit(3)")
        async with handler_kit(
            tmp_path, handlers=Registry(), env={"RECEIVER_COMMAND": command}
        ) as kit:
            job = await kit.job("apiframe")
            await kit.callback(job, "failed")
            [run] = await kit.settle()
        assert ("dead", 3) == (run.state.value, run.attempts)
        assert "CommandFailed: exited with 3: disk full" == run.error

    async def test_timeout_kills_the_whole_process_group(self, tmp_path: Path) -> None:
        """Past the timeout the program and the child it started are both killed."""
        pid_file = tmp_path / "child.pid"
        code = f"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open({str(pid_file)!r}, "w").write(str(child.pid))
time.sleep(60)
"""
        env = {
            "RECEIVER_COMMAND": _program(tmp_path, code),
            "RECEIVER_COMMAND_TIMEOUT": "1",
            "RECEIVER_HANDLER_MAX_ATTEMPTS": "1",
        }
        async with handler_kit(tmp_path, handlers=Registry(), env=env) as kit:
            job = await kit.job("apiframe")
            await kit.callback(job, "succeeded")
            [run] = await kit.settle(timeout=20)
        assert "CommandFailed: timed out after 1s; process group killed" == run.error
        child = int(pid_file.read_text())
        assert _gone(child)


async def _failed_with(kit: HandlerKit, job: KitJob, reason: str) -> None:
    """rixapi's failure post for `job`, its `msg` (the job's error) chosen by the test."""
    body = {"task_id": job.task_id, "status": "2", "msg": reason}
    answer = await kit.client.post(f"{kit.receiver.url}/hooks/rixapi/{job.token}", json=body)
    assert 200 == answer.status_code, answer.text


class TestCommandValues:
    """An event value never becomes an option of the program, and is passed whole or not at all."""

    async def test_a_value_beginning_with_a_dash_is_not_run_as_an_option(
        self, tmp_path: Path
    ) -> None:
        """`{error}` as a whole argument, filled with `--exec=/bin/sh`, fails the delivery
        with the reason, and the program never runs."""
        record = tmp_path / "record.json"
        command = _program(tmp_path, _RECORD) + f" {record} {{error}}"
        async with handler_kit(
            tmp_path, handlers=Registry(), env={"RECEIVER_COMMAND": command}
        ) as kit:
            job = await kit.job("rixapi")
            await _failed_with(kit, job, "--exec=/bin/sh")
            [run] = await kit.settle()
        assert ("dead", 1) == (run.state.value, run.attempts)
        assert run.error is not None
        assert run.error.startswith("CommandRefused: argument 3 ({error}) would begin with '-'")
        assert not record.exists()

    async def test_after_double_dash_or_as_name_equals_value_it_is_passed(
        self, tmp_path: Path
    ) -> None:
        """`--reason={error}` and an argument after a literal `--` carry the value as it is."""
        record = tmp_path / "record.json"
        command = _program(tmp_path, _RECORD) + f" {record} --reason={{error}} -- {{error}}"
        async with handler_kit(
            tmp_path, handlers=Registry(), env={"RECEIVER_COMMAND": command}
        ) as kit:
            job = await kit.job("rixapi")
            await _failed_with(kit, job, "--exec=/bin/sh")
            [run] = await kit.settle()
        assert run.done
        expected = ["--reason=--exec=/bin/sh", "--", "--exec=/bin/sh"]
        assert expected == json.loads(record.read_text())["argv"]

    async def test_a_nul_byte_fails_the_delivery_with_the_reason(self, tmp_path: Path) -> None:
        """A value holding NUL is never cut short: the program does not run, and the
        delivery's error says which argument could not be passed."""
        record = tmp_path / "record.json"
        command = _program(tmp_path, _RECORD) + f" {record} 'why: {{error}}'"
        async with handler_kit(
            tmp_path, handlers=Registry(), env={"RECEIVER_COMMAND": command}
        ) as kit:
            job = await kit.job("rixapi")
            await _failed_with(kit, job, "bad\x00--exec=/bin/sh")
            [run] = await kit.settle()
        assert ("dead", 1) == (run.state.value, run.attempts)
        expected = "CommandRefused: argument 3 ({error}) holds a NUL byte"
        assert (run.error or "").startswith(expected)
        assert not record.exists()

    async def test_a_nul_byte_in_a_variable_fails_the_delivery(self, tmp_path: Path) -> None:
        """Without a placeholder, the value still cannot reach EVENT_ERROR cut short."""
        record = tmp_path / "record.json"
        command = _program(tmp_path, _RECORD) + f" {record}"
        async with handler_kit(
            tmp_path, handlers=Registry(), env={"RECEIVER_COMMAND": command}
        ) as kit:
            job = await kit.job("rixapi")
            await _failed_with(kit, job, "bad\x00news")
            [run] = await kit.settle()
        assert ("dead", 1) == (run.state.value, run.attempts)
        assert (run.error or "").startswith("CommandRefused: EVENT_ERROR holds a NUL byte")
        assert not record.exists()


def _gone(pid: int, wait: float = 5.0) -> bool:
    """Whether the process has ended (a zombie waiting for its reaper counts as ended)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


class TestSettings:
    """Bad built-in settings stop the start with one line that echoes no URL or secret."""

    @pytest.mark.parametrize(
        ("environ", "expected"),
        [
            (
                {"RECEIVER_FORWARD_URLS": "https://user:pa55@hooks.test/x"},
                "RECEIVER_FORWARD_SECRET is required with RECEIVER_FORWARD_URLS",
            ),
            (
                {"RECEIVER_FORWARD_URLS": "ftp://user:pa55@hooks.test/x"},
                "RECEIVER_FORWARD_URLS must be an absolute http(s) URL",
            ),
            (
                {"RECEIVER_FORWARD_URLS": "https://h.test", "RECEIVER_FORWARD_SECRET": "pa55"},
                "RECEIVER_FORWARD_SECRET must be a Standard Webhooks secret",
            ),
            ({"RECEIVER_NOTIFY_URL": "hooks.slack.com/pa55"}, "RECEIVER_NOTIFY_URL must be"),
            ({"RECEIVER_NOTIFY_FORMAT": "teams"}, "RECEIVER_NOTIFY_FORMAT must be one of"),
            ({"RECEIVER_FORWARD_STATUSES": "done"}, "RECEIVER_FORWARD_STATUSES: unknown status"),
            ({"RECEIVER_DOWNLOAD_PROVIDERS": "x"}, "RECEIVER_DOWNLOAD_PROVIDERS: unknown provider"),
            (
                {"RECEIVER_COMMAND": "run {secret}"},
                "RECEIVER_COMMAND: unknown placeholder {secret}",
            ),
            ({"RECEIVER_COMMAND": "run 'open"}, "RECEIVER_COMMAND: unbalanced quotes"),
            ({"RECEIVER_COMMAND": "{result_url} x"}, "the program cannot be a placeholder"),
            ({"RECEIVER_COMMAND_TIMEOUT": "0"}, "RECEIVER_COMMAND_TIMEOUT must be greater than 0"),
            (
                {"RECEIVER_DOWNLOAD_MAX_BYTES": "0"},
                "RECEIVER_DOWNLOAD_MAX_BYTES must be at least 1",
            ),
            ({"RECEIVER_FORWARD_METADATA": "acme"}, "RECEIVER_FORWARD_METADATA must look like"),
            (
                {
                    "RECEIVER_GENERIC_PROVIDERS": "notify",
                    "RECEIVER_NOTIFY_WEBHOOK_SECRET": "whsec_" + "QUJD" * 8,
                },
                "generic provider name 'notify' is reserved",
            ),
        ],
    )
    def test_errors(
        self,
        environ: dict[str, str],
        expected: str,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.chdir(tmp_path)
        with pytest.raises(ConfigError) as caught:
            load_settings(environ)
        assert expected in str(caught.value)
        assert "pa55" not in str(caught.value)

    def test_file_sections(self, tmp_path: Path) -> None:
        """`[forward]`, `[notify]`, `[command]` and `[download]` tables are read; variables win."""
        secret = mint_whsec()
        config = tmp_path / "receiver.toml"
        config.write_text(
            f"""
[forward]
urls = ["https://a.test/hook"]
secret = "{secret}"
metadata = {{ customer = "acme" }}

[command]
argv = ["/usr/bin/env", "{{job_id}}"]
timeout = 5

[download]
dir = "videos"
"""
        )
        settings = load_settings({"RECEIVER_DOWNLOAD_DIR": "elsewhere"}, config_file=config)
        assert (["https://a.test/hook"], secret, {"customer": "acme"}) == (
            settings.forward.urls,
            settings.forward.secret,
            settings.forward.metadata,
        )
        assert (["/usr/bin/env", "{job_id}"], 5.0) == (
            settings.command.argv,
            settings.command.timeout,
        )
        assert "elsewhere" == settings.download.dir

    def test_nothing_configured_registers_nothing(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With no built-in configured the registry stays as the user left it."""
        from receiver.builtins import install_builtins

        monkeypatch.chdir(tmp_path)
        registry = Registry()
        settings = load_settings({})
        assert [] == install_builtins(registry, settings, client=None, store=None)  # type: ignore[arg-type]
        assert {} == registry.handlers
