"""The `beacon` command as a user meets it: real processes, one-line errors with exit codes, help, --version."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
from importlib import metadata
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from beacon import cli_settings
from beacon.cli import build_parser
from beacon.redis_server import free_port
from tests.harness import running_beacon, server_settings
from tests.processes import BEACON, clean_env
from tests.processes import run_beacon as beacon

RULESET = {
    "id": "big-spend",
    "rules": [{"id": "r1", "when": {"event": "pay"}, "then": [{"action": "tag", "add": ["x"]}]}],
}


def one_line(err: str) -> str:
    """The single line a failed command printed (no traceback, nothing else)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def ruleset_file(tmp_path: Path) -> Path:
    path = tmp_path / "ruleset.json"
    path.write_text(json.dumps(RULESET))
    return path


async def test_version_comes_from_the_package_metadata() -> None:
    code, out, _ = await beacon("--version")
    assert (code, out.strip()) == (0, f"beacon {metadata.version('beacon-cep')}")


def test_every_command_and_option_has_help() -> None:
    """Options had no help text at all."""
    missing = []
    parsers = [("beacon", build_parser())]
    while parsers:
        name, parser = parsers.pop()
        for action in parser._actions:  # argparse keeps no public list of a parser's arguments
            if isinstance(action, argparse._SubParsersAction):
                helped = {choice.dest for choice in action._choices_actions if choice.help}
                missing += [f"{name} {sub}" for sub in action.choices if sub not in helped]
                parsers += [(f"{name} {sub}", subparser) for sub, subparser in action.choices.items()]
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("BEACON_RUN_WORKERS", "ture", "BEACON_RUN_WORKERS: 'ture' is not a boolean"),
        ("BEACON_PORTT", "9000", "BEACON_PORTT: unknown setting; did you mean BEACON_PORT?"),
        ("BEACON_LOG_LEVEL", "verbose", "BEACON_LOG_LEVEL: 'verbose' is not one of DEBUG, INFO"),
        ("BEACON_PORT", "80800", "BEACON_PORT: 80800 is out of range: use a number from 0 to 65535"),
    ],
)
async def test_a_bad_setting_stops_with_one_line_and_exit_code_2(variable: str, value: str, message: str) -> None:
    """`ture` meant false, a misspelt name was ignored, and `verbose` crashed with a traceback."""
    code, _, err = await beacon("serve", **{variable: value})
    assert code == 2
    assert one_line(err).startswith(f"beacon: configuration error: {message}")


async def test_settings_lists_each_variable_with_its_value_and_source(tmp_path: Path) -> None:
    """`beacon settings` shows what applies and where it came from; secrets only as ***."""
    keys = tmp_path / "keys"
    keys.write_text("key-of-alice:admin\n")
    code, out, err = await beacon(
        "settings",
        BEACON_PORT="9000",
        BEACON_API_KEYS_FILE=str(keys),
        BEACON_WECHAT_SECRET="wx-hush",
        BEACON_CONNECTOR_QUIET_HOURS="22:00-08:00",
    )
    assert (code, err) == (0, "")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert rows["BEACON_PORT"] == ["9000", "environment"]
    assert rows["BEACON_API_KEYS"] == ["***", "BEACON_API_KEYS_FILE"]
    assert rows["BEACON_WECHAT_SECRET"] == ["***", "environment"]
    assert rows["BEACON_CONNECTOR_QUIET_HOURS"] == ["22:00-08:00", "environment"]
    assert rows["BEACON_WORKER_BATCH"] == ["500", "default"]
    assert "key-of-alice" not in out and "wx-hush" not in out
    code, _, err = await beacon("settings", BEACON_MINIPROGRAM_STATE="beta")
    assert code == 2
    assert one_line(err) == (
        "beacon: configuration error: BEACON_MINIPROGRAM_STATE: 'beta' is not one of formal, trial, developer"
    )


async def test_settings_markdown_prints_the_documents_tables() -> None:
    """What tests/test_settings.py checks the README and docs/connectors.md hold."""
    code, out, _ = await beacon("settings", "--markdown")
    assert (code, out) == (0, cli_settings.markdown() + "\n")
    assert out.count("| variable | default | value | meaning |") == 2


async def test_a_reader_that_left_gets_no_traceback() -> None:
    """`beacon settings | head -1` printed a BrokenPipeError traceback when `head` had gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has left before the first line
    try:
        process = await asyncio.create_subprocess_exec(
            *BEACON, "settings", env=clean_env(), stdout=write_end, stderr=asyncio.subprocess.PIPE
        )
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert (process.returncode, err.decode()) == (1, "")


async def test_push_to_a_server_that_is_down_is_one_line_and_exit_code_3(ruleset_file: Path) -> None:
    """It printed a 40-60 line traceback."""
    port = free_port()
    code, _, err = await beacon("rules", "push", str(ruleset_file), "--url", f"http://127.0.0.1:{port}")
    assert code == 3
    assert one_line(err) == f"beacon: cannot connect to 127.0.0.1:{port}: Connection refused"


async def test_push_to_a_server_that_never_answers_times_out(ruleset_file: Path) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        code, _, err = await beacon(
            "rules", "push", str(ruleset_file), "--url", f"http://127.0.0.1:{port}", "--timeout", "0.5"
        )
    assert code == 3
    assert one_line(err) == f"beacon: no answer from 127.0.0.1:{port} within 0.5s"


async def test_push_shows_the_servers_json_error(
    redis_url: str, redis_client: aioredis.Redis, ruleset_file: Path, tmp_path: Path
) -> None:
    settings = server_settings(redis_url, run_workers=False, api_keys={"root": frozenset({"rules", "events", "admin"})})
    async with running_beacon(settings) as server:
        url = server.url("")
        code, _, err = await beacon("rules", "push", str(ruleset_file), "--url", url, "--key", "wrong")
        assert code == 4
        assert one_line(err).startswith(f"beacon: {url}/v1/rulesets/big-spend: HTTP 401 unauthorized: Authorization: ")

        invalid = tmp_path / "invalid.json"
        invalid.write_text(json.dumps({"id": "bad", "rules": [{"id": "r1", "when": {"event": 5}, "then": []}]}))
        code, _, err = await beacon("rules", "push", str(invalid), "--url", url, BEACON_API_KEY="root")
        assert code == 1
        assert err.startswith(f"{invalid}: rules[0]."), err

        code, out, err = await beacon("rules", "push", str(ruleset_file), BEACON_URL=url, BEACON_API_KEY="root")
        assert (code, out.strip(), err) == (0, "pushed big-spend as version 1", "")

        code, out, _ = await beacon("healthcheck", "--url", f"{url}/healthz")
        assert (code, out.strip()) == (0, f"{url}/healthz: healthy")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "127.0.0.1:8080"], "beacon: --url '127.0.0.1:8080': use an http:// or https:// URL"),
        (["--url", "ftp://example.com"], "beacon: --url 'ftp://example.com': use an http:// or https:// URL"),
    ],
)
async def test_push_usage_errors_exit_2(ruleset_file: Path, args: list[str], message: str) -> None:
    code, _, err = await beacon("rules", "push", str(ruleset_file), *args)
    assert (code, one_line(err)) == (2, message)


async def test_push_of_a_missing_file_exits_2(tmp_path: Path) -> None:
    code, _, err = await beacon("rules", "push", str(tmp_path / "nope.json"))
    assert (code, one_line(err)) == (2, f"beacon: cannot read {tmp_path / 'nope.json'}: No such file or directory")


async def test_serve_without_redis_is_one_line_and_exit_code_3() -> None:
    port = free_port()
    url = f"redis://default:hunter2@127.0.0.1:{port}/0"
    code, _, err = await beacon("serve", BEACON_REDIS_URL=url, BEACON_LOG_LEVEL="ERROR")
    assert code == 3
    line = one_line(err)
    assert line.startswith(f"beacon: cannot reach Redis at redis://default:***@127.0.0.1:{port}/0: "), line
    assert "hunter2" not in err


async def test_serve_on_a_port_in_use_is_one_line_and_exit_code_2(redis_url: str, redis_client: aioredis.Redis) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, _, err = await beacon(
            "serve", BEACON_REDIS_URL=redis_url, BEACON_PARTITIONS="2", BEACON_PORT=str(port), BEACON_LOG_LEVEL="ERROR"
        )
    assert code == 2
    assert one_line(err) == f"beacon: BEACON_PORT: cannot listen on 127.0.0.1:{port}: Address already in use"


async def test_healthcheck_exits_1_when_nothing_answers() -> None:
    """Docker's HEALTHCHECK reserves exit code 2: a health check exits 0 or 1, whatever went wrong."""
    port = free_port()
    code, _, err = await beacon("healthcheck", BEACON_PORT=str(port), BEACON_OPS_PORT=str(port))
    assert code == 1
    assert one_line(err).startswith(f"beacon: no health endpoint answered (cannot connect to 127.0.0.1:{port}")
    code, _, err = await beacon("healthcheck", BEACON_RUN_WORKERS="ture")
    assert code == 1 and "BEACON_RUN_WORKERS" in one_line(err)
