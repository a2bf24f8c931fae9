"""Settings from the environment: strict booleans, numbers in range, choices, unknown names refused with a
did-you-mean, Redis URLs checked, secrets from files, passwords and secrets redacted from logs, text or JSON log
lines; the README lists every variable."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from beacon import cli_settings, environment
from beacon.environment import FALSE_WORDS, TRUE_WORDS
from beacon.errors import ValidationError
from beacon.logs import JsonFormatter, RedactingFormatter, configure_logging, redact
from beacon.settings import SECRET_VARIABLES, Settings, known_variables, settings_variables
from connectors.settings import ConnectorSettings

ROOT = Path(__file__).resolve().parents[1]


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
        # Forms msgspec's lax conversion would take, or that were once taken for out of range:
        ("BEACON_PORT", "+5", "'+5' is not a whole number"),
        ("BEACON_PORT", "1e3", "'1e3' is not a whole number"),
        ("BEACON_PORT", "12_", "'12_' is not a whole number"),
        ("BEACON_PORT", "\u0661\u0662", "'\u0661\u0662' is not a whole number"),
        ("BEACON_OPS_PORT", "null", "'null' is not a whole number"),
        ("BEACON_SERVE_PARTITION_WEIGHT", "1.", "'1.' is not a decimal number"),
        ("BEACON_SERVE_PARTITION_WEIGHT", "nan", "'nan' is not a decimal number"),
        ("BEACON_ARCHIVE_FLUSH_MS", "100000000", "100000000 is out of range: use a number from 100 to 3600000"),
        ("BEACON_CONNECTOR_RATE_LIMIT_MAX_WAIT_MS", "-1", "-1 is out of range: use a number >= 0"),
        ("BEACON_REDIS_TIMEOUT_MS", "100", "100 is out of range: use a number from 500 to 300000"),
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
    fractions = Settings.from_env({"BEACON_SERVE_PARTITION_WEIGHT": ".5", "BEACON_CONNECTOR_BACKOFF_JITTER": ".25"})
    assert (fractions.serve_partition_weight, fractions.connectors.retry.jitter) == (0.5, 0.25)


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


def test_a_file_variable_of_a_setting_that_is_no_secret_is_refused() -> None:
    message = refused({"BEACON_PORT_FILE": "/run/secrets/port"})
    assert message == "BEACON_PORT_FILE: unknown setting; BEACON_PORT cannot be read from a file (only secrets can)"
    assert refused({"BEACON_API_KEYS_FIEL": "/k"}) == (
        "BEACON_API_KEYS_FIEL: unknown setting; did you mean BEACON_API_KEYS_FILE?"
    )


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
    # Without a scheme it may be a bare password: never quoted.
    assert refused({"REDIS_URL": "redis:6379"}).startswith("REDIS_URL: the value is not a Redis URL")
    for url in ("redis://r:6379/0", "rediss://u:p@r", "unix:///tmp/r.sock", "redis+cluster://r:7000"):
        assert Settings.from_env({"BEACON_REDIS_URL": url}).redis_url == url


def test_connector_settings_keep_their_own_checks() -> None:
    message = refused({"BEACON_CONNECTOR_LEASE_MS": "1000", "BEACON_CONNECTOR_HTTP_TIMEOUT_MS": "3000"})
    assert message.startswith("BEACON_CONNECTOR_LEASE_MS: 1000 ms is too short")


def secret_file(tmp_path: Path, text: str, name: str = "secret") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_secrets_are_read_from_files(tmp_path: Path) -> None:
    """Docker and Kubernetes mount secrets as files; every secret setting takes `<NAME>_FILE`, newline stripped."""
    env = {
        "BEACON_API_KEYS_FILE": secret_file(tmp_path, "k1:admin,k2:events\n", "keys"),
        "REDIS_URL_FILE": secret_file(tmp_path, "redis://:hunter2@redis:6379/0\n", "url"),
        "BEACON_WEBHOOK_SECRET_FILE": secret_file(tmp_path, "whsec-1\r\n", "webhook"),
        "BEACON_WECHAT_SECRET_FILE": secret_file(tmp_path, "wx-secret", "wechat"),
        "BEACON_SMS_TOKEN_FILE": secret_file(tmp_path, "sms-token\n", "sms"),
    }
    settings = Settings.from_env(env)
    assert settings.api_keys == {"k1": frozenset({"rules", "events", "admin"}), "k2": frozenset({"events"})}
    assert settings.redis_url == "redis://:hunter2@redis:6379/0"
    assert (settings.connectors.webhook_secret, settings.connectors.wechat.secret) == ("whsec-1", "wx-secret")
    assert settings.connectors.sms.headers["Authorization"] == "Bearer sms-token"
    assert settings.secret_values() >= {"k1", "k2", "hunter2", "whsec-1", "wx-secret", "sms-token"}
    path = secret_file(tmp_path, "redis://r:6379/1", "beacon-url")
    assert Settings.from_env({"BEACON_REDIS_URL_FILE": path}).redis_url == "redis://r:6379/1"


def test_every_secret_is_read_from_its_file_and_hidden_from_logs(tmp_path: Path) -> None:
    env: dict[str, str] = {}
    for name in SECRET_VARIABLES:
        value = f"pw-{name.lower()}"
        text = f"redis://:{value}@r:6379" if name.endswith("REDIS_URL") else value
        if name.endswith("_HEADERS"):
            text = json.dumps({"Authorization": f"Bearer {value}"})
        env[name + "_FILE"] = secret_file(tmp_path, text + ":admin" if name == "BEACON_API_KEYS" else text, name)
    plain = env.pop("REDIS_URL_FILE")  # BEACON_REDIS_URL wins over REDIS_URL
    assert {f"pw-{name.lower()}" for name in SECRET_VARIABLES} - {"pw-redis_url"} <= Settings.from_env(
        env
    ).secret_values()
    assert "pw-redis_url" in Settings.from_env({"REDIS_URL_FILE": plain}).secret_values()
    assert {name + "_FILE" for name in SECRET_VARIABLES if name.startswith("BEACON_")} <= known_variables()


def test_a_secret_set_both_ways_is_refused(tmp_path: Path) -> None:
    env = {"BEACON_API_KEYS": "k:admin", "BEACON_API_KEYS_FILE": secret_file(tmp_path, "k:admin")}
    message = refused(env)
    assert message.startswith("BEACON_API_KEYS_FILE: ")
    assert "BEACON_API_KEYS or BEACON_API_KEYS_FILE, not both" in message
    # An empty value is unset, here as everywhere.
    assert Settings.from_env({**env, "BEACON_API_KEYS": ""}).api_keys == {"k": frozenset({"rules", "events", "admin"})}


@pytest.mark.parametrize("problem", ["missing", "directory", "empty", "binary"])
def test_an_unreadable_secret_file_is_named_never_quoted(tmp_path: Path, problem: str) -> None:
    path = tmp_path / "wecom"
    if problem == "directory":
        path.mkdir()
    elif problem == "empty":
        path.write_text("\n")
    elif problem == "binary":
        path.write_bytes(b"hunter2\xff\xfe")
    message = refused({"BEACON_WECOM_SECRET_FILE": str(path)})
    assert message.startswith("BEACON_WECOM_SECRET_FILE: ") and str(path) in message
    assert "hunter2" not in message


def test_a_refused_secret_from_a_file_names_the_file_variable_and_hides_the_value(tmp_path: Path) -> None:
    """A bare password where the Redis URL belongs: the error says so without printing the password."""
    path = secret_file(tmp_path, "hunter2\n")
    message = refused({"BEACON_REDIS_URL_FILE": path})
    assert message.startswith("BEACON_REDIS_URL_FILE: the value is not a Redis URL") and path in message
    assert "hunter2" not in message
    message = refused({"BEACON_API_KEYS_FILE": secret_file(tmp_path, "k:nosuchscope", "keys")})
    assert message.startswith("BEACON_API_KEYS_FILE: unknown scope(s) ['nosuchscope']")


def test_configured_secrets_never_reach_a_log_line() -> None:
    env = {
        "BEACON_API_KEYS": "key-of-alice:admin",
        "BEACON_WEBHOOK_SECRET": "whsec-hush",
        "BEACON_COUPON_TOKEN": "coupon-hush",
        "BEACON_REDIS_URL": "redis://u:hunter2@r:6379/0",
    }
    settings = Settings.from_env(env)
    record = logging.LogRecord(
        "beacon", logging.INFO, __file__, 1, "%s %s %s", ("key-of-alice", settings.connectors, "hunter2"), None
    )
    for formatter in (
        RedactingFormatter("%(message)s", secrets=settings.secret_values()),
        JsonFormatter(secrets=settings.secret_values()),
    ):
        line = formatter.format(record)
        assert not {"key-of-alice", "whsec-hush", "coupon-hush", "hunter2"} & set(re.findall(r"[\w-]+", line))
    # WeChat's and WeCom's token calls carry the app secret in the query string.
    assert redact("GET https://api/cgi-bin/gettoken?corpid=c&corpsecret=s3&x=1") == (
        "GET https://api/cgi-bin/gettoken?corpid=c&corpsecret=***&x=1"
    )


def test_json_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """BEACON_LOG_FORMAT=json: one object per line, with the ids a call passes as `extra`, and the traceback."""
    assert Settings.from_env({"BEACON_LOG_FORMAT": "JSON"}).log_format == "json"
    assert refused({"BEACON_LOG_FORMAT": "yaml"}) == "BEACON_LOG_FORMAT: 'yaml' is not one of text, json"
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("INFO", "json", secrets={"sekrit-value"})
    try:
        log = logging.getLogger("beacon.test")
        ids = {"partition": 3, "user_id": "u1", "action_id": "a1", "connector": "sms", "ratio": 0.5}
        log.info("delivered %d of %s to %s", 2, "sekrit-value", "redis://u:pw@r", extra=ids)
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed on partition %s", 4, extra={"partition": 4})
        log.debug("not at INFO")
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first == {
        "ts": first["ts"],
        "level": "INFO",
        "logger": "beacon.test",
        "message": "delivered 2 of *** to redis://u:***@r",
        **ids,
    }
    ts = datetime.fromisoformat(first["ts"])
    assert ts.utcoffset() == timedelta(0)
    assert abs((datetime.now(UTC) - ts).total_seconds()) < 60
    assert (second["level"], second["message"], second["partition"]) == ("ERROR", "failed on partition 4", 4)
    assert second["exc"].startswith("Traceback") and second["exc"].endswith("ValueError: boom")


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


@pytest.mark.parametrize(("document", "model"), [("README.md", Settings), ("docs/connectors.md", ConnectorSettings)])
def test_configuration_tables_are_the_generated_ones(document: str, model: type) -> None:
    """The README's and docs/connectors.md's tables are generated from the settings models (`beacon settings
    --markdown`), so a variable added, renamed or re-bounded in the model shows up as a failure here."""
    text = (ROOT / document).read_text()
    begin = text.index("<!-- generated by `beacon settings --markdown`")
    begin = text.index("\n", begin) + 1
    assert text[begin : text.index("<!-- end of the generated table -->", begin)] == environment.markdown_table(model)
    assert f"<!-- {document} -->\n{environment.markdown_table(model)}" in cli_settings.markdown()


def test_every_variable_is_in_a_table() -> None:
    tables = cli_settings.markdown()
    documented = set(re.findall(r"`((?:BEACON_|REDIS_)[A-Z_]+)`", tables))
    assert settings_variables() <= documented
    assert {name for name in documented if not name.endswith("_FILE")} <= known_variables() | {"REDIS_URL"}
    assert documented >= set(SECRET_VARIABLES)


def test_an_api_key_may_name_its_owner() -> None:
    """`key:scopes:owner` gives the rulesets a key stores an owner; entries without one read as before."""
    settings = Settings.from_env({"BEACON_API_KEYS": "k1:rules:alice, k2:rules+events, k3:admin:ops-team"})
    assert settings.api_keys == {
        "k1": frozenset({"rules"}),
        "k2": frozenset({"rules", "events"}),
        "k3": frozenset({"rules", "events", "admin"}),
    }
    assert settings.api_key_owners == {"k1": "alice", "k3": "ops-team"}
    for bad in ("k1:rules:", "k1:rules:has space", "k1:rules:a:b"):
        assert refused({"BEACON_API_KEYS": bad}).startswith("BEACON_API_KEYS: an owner must match"), bad


def test_a_secret_read_from_a_file_is_not_quoted_with_its_blanks_stripped(tmp_path: Path) -> None:
    """`REDIS_URL_FILE` holding `hunter2pw ` (a trailing blank) was quoted stripped, past the redaction of the
    unstripped text."""
    path = tmp_path / "url"
    path.write_text("hunter2pw \n")
    message = refused({"REDIS_URL_FILE": str(path)})
    assert message.startswith("REDIS_URL_FILE: the value is not a Redis URL") and "hunter2pw" not in message
    headers = tmp_path / "headers"
    headers.write_text('{"Authorization": "Bearer from-a-file"}')
    settings = Settings.from_env({"BEACON_COUPON_HEADERS_FILE": str(headers)})
    assert settings.connectors.coupon.headers == {"Authorization": "Bearer from-a-file"}
    assert "from-a-file" in settings.secret_values()
