"""Settings from the environment: strict booleans, numbers in range, choices, unknown names refused with a
did-you-mean, Redis URLs checked, passwords redacted from logs; the README lists every variable."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest

from beacon.errors import ValidationError
from beacon.logs import RedactingFormatter, redact
from beacon.settings import FALSE_WORDS, TRUE_WORDS, Settings, known_variables, settings_variables

README = Path(__file__).resolve().parents[1] / "README.md"


def refused(env: dict[str, str]) -> str:
    """The one-line error `Settings.from_env` raises for `env`."""
    with pytest.raises(ValidationError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("word", [*TRUE_WORDS, "TRUE", "Yes", " on "])
def test_true_spellings(word: str) -> None:
    assert Settings.from_env({"BEACON_REDIS_CLUSTER": word}).redis_cluster is True


@pytest.mark.parametrize("word", [*FALSE_WORDS, "FALSE", "No", "OFF"])
def test_false_spellings(word: str) -> None:
    assert Settings.from_env({"BEACON_RUN_WORKERS": word}).run_workers is False


@pytest.mark.parametrize("word", ["ture", "2", "enabled", "y", "-1"])
def test_other_booleans_are_refused(word: str) -> None:
    """`BEACON_RUN_WORKERS=ture` silently meant false."""
    assert refused({"BEACON_RUN_WORKERS": word}).startswith(f"BEACON_RUN_WORKERS: {word!r} is not a boolean: use 1,")


def test_an_empty_value_means_unset() -> None:
    settings = Settings.from_env({"BEACON_RUN_WORKERS": "", "BEACON_PORT": "", "BEACON_PORTT": ""})
    assert (settings.run_workers, settings.port) == (True, 8080)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("BEACON_PORT", "8o80", "'8o80' is not a whole number"),
        ("BEACON_PORT", "1.5", "'1.5' is not a whole number"),
        ("BEACON_PORT", "65536", "65536 is out of range: use a number from 0 to 65535"),
        ("BEACON_OPS_PORT", "-1", "-1 is out of range: use a number from 0 to 65535"),
        ("BEACON_PARTITIONS", "0", "0 is out of range: use a number from 1 to 16384"),
        ("BEACON_WORKER_BATCH", "0", "0 is out of range: use a number >= 1"),
        ("BEACON_HEALTH_STALL_MS", "10", "10 is out of range: use a number >= 1000"),
        ("BEACON_LOG_LEVEL", "verbose", "'verbose' is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("BEACON_ACK_FSYNC", "maybe", "'maybe' is not one of auto, on, off"),
    ],
)
def test_numbers_and_choices_out_of_range(variable: str, value: str, message: str) -> None:
    """`BEACON_LOG_LEVEL=verbose` crashed the process with a traceback from logging."""
    assert refused({variable: value}) == f"{variable}: {message}"


def test_numbers_and_choices_in_range() -> None:
    settings = Settings.from_env(
        {
            "BEACON_STATE_CACHE_USERS": "1_000_000",
            "BEACON_OPS_PORT": "0",
            "BEACON_LOG_LEVEL": "debug",
            "BEACON_ACK_FSYNC": "OFF",
            "BEACON_EMBEDDED_REDIS_PORT": "6390",
        }
    )
    assert settings.state_cache_users == 1_000_000
    assert (settings.ops_port, settings.log_level, settings.ack_fsync) == (0, "DEBUG", "off")
    assert settings.embedded_redis_port == 6390


def test_ops_address_defaults_to_the_api_host_and_a_port_per_role() -> None:
    settings = Settings.from_env({"BEACON_HOST": "0.0.0.0"})
    assert settings.ops_address("worker") == ("0.0.0.0", 8081, False)
    assert settings.ops_address("connectors") == ("0.0.0.0", 8082, False)
    settings = Settings.from_env({"BEACON_OPS_HOST": "127.0.0.2", "BEACON_OPS_PORT": "9100"})
    assert settings.ops_address("worker") == ("127.0.0.2", 9100, True)


@pytest.mark.parametrize(
    ("variable", "suggestion"),
    [
        ("BEACON_PORTT", "BEACON_PORT"),
        ("BEACON_RUN_WORKER", "BEACON_RUN_WORKERS"),
        ("BEACON_WEBHOOK_ALLOWED_HOST", "BEACON_WEBHOOK_ALLOWED_HOSTS"),  # a connector setting
        ("BEACON_COUPON_URLS", "BEACON_COUPON_URL"),
    ],
)
def test_an_unknown_name_is_refused_with_the_closest_known_one(variable: str, suggestion: str) -> None:
    """A misspelt `BEACON_PORTT` was ignored: the server started on the default port."""
    assert refused({variable: "1"}) == f"{variable}: unknown setting; did you mean {suggestion}?"


def test_every_unknown_name_is_listed_and_a_far_one_gets_no_guess() -> None:
    message = refused({"BEACON_ZZZ": "1", "BEACON_QQQ": "2", "BEACON_PORT": "1"})
    assert message == "BEACON_QQQ: unknown setting (1 more unknown: BEACON_ZZZ)"


def test_names_read_elsewhere_are_known() -> None:
    env = {
        "BEACON_URL": "http://beacon:8080",  # CLI
        "BEACON_API_KEY": "k",  # CLI
        "BEACON_REDIS_SERVER": "/usr/bin/redis-server",  # beacon.redis_server
        "BEACON_CONNECTOR_TIMEZONE": "Asia/Shanghai",  # read by connectors only with quiet hours
        "BEACON_WECHAT_APPID": "wx1",
        "BEACON_SMS_EXTRA": "{}",
    }
    Settings.from_env(env)
    assert set(env) <= known_variables()


def test_a_redis_url_needs_a_redis_scheme_and_the_error_hides_its_password() -> None:
    message = refused({"BEACON_REDIS_URL": "http://default:hunter2@redis:6379"})
    assert message.startswith("BEACON_REDIS_URL: 'http://default:***@redis:6379' is not a Redis URL")
    assert refused({"REDIS_URL": "redis:6379"}).startswith("REDIS_URL: 'redis:6379' is not a Redis URL")
    for url in ("redis://r:6379/0", "rediss://u:p@r", "unix:///tmp/r.sock", "redis+cluster://r:7000"):
        assert Settings.from_env({"BEACON_REDIS_URL": url}).redis_url == url


def test_connector_settings_keep_their_own_checks() -> None:
    message = refused({"BEACON_CONNECTOR_LEASE_MS": "1000", "BEACON_CONNECTOR_HTTP_TIMEOUT_MS": "3000"})
    assert message.startswith("BEACON_CONNECTOR_LEASE_MS: 1000 ms is too short")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis on redis://:hunter2@10.0.0.1:6379/0", "redis on redis://:***@10.0.0.1:6379/0"),
        ("rediss://default:hun@ter2@r:6380 up", "rediss://default:***@r:6380 up"),
        ("redis://r:6379/0?password=hunter2&db=1", "redis://r:6379/0?password=***&db=1"),
        ("redis://user@r:6379 and http://a:b@c/x", "redis://user@r:6379 and http://a:***@c/x"),
        ("no url, mail me@example.com", "no url, mail me@example.com"),
    ],
)
def test_redact_hides_passwords_only(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_log_lines_and_tracebacks_are_redacted() -> None:
    """The Redis URL, password included, was logged at INFO by serve and worker."""
    formatter = RedactingFormatter("%(message)s")
    try:
        raise ConnectionError("cannot reach redis://default:hunter2@r:6379")
    except ConnectionError:
        record = logging.LogRecord("beacon", logging.ERROR, __file__, 1, "on %s", ("redis://u:hunter2@r",), None)
        record.exc_info = sys.exc_info()
    line = formatter.format(record)
    assert "hunter2" not in line
    assert "redis://u:***@r" in line and "redis://default:***@r:6379" in line


def test_readme_configuration_table_lists_every_setting() -> None:
    """The README's table is checked against what `Settings.from_env` reads, both ways."""
    text = README.read_text()
    table = text[text.index("## Configuration") :]
    table = table[: table.index("\n## ")]
    documented = set(re.findall(r"`(BEACON_[A-Z_]+)`", table))
    assert settings_variables() - documented == set()
    assert documented - known_variables() == set()
