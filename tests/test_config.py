"""Configuration: defaults < YAML file < HUB_MIRROR_* environment < flags, with typed, named errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mirror.config import ConfigError, load_config


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mirror.yaml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    config = load_config(None, environ={})
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8090
    assert config.upstream.url == "https://huggingface.co"
    assert config.cache.dir == "./hub-mirror-cache"
    assert config.cache_dir == Path("./hub-mirror-cache")
    assert config.storage.backend == "local"
    assert config.hub.strip_xet is True


def test_empty_yaml_file_keeps_defaults(tmp_path: Path) -> None:
    config = load_config(write_yaml(tmp_path, ""), environ={})
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8090)


def test_precedence_defaults_file_environment_flags(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "server:\n  host: 0.0.0.0\n  port: 9001\n"
        "upstream:\n  url: http://file.example\n  read_timeout: 5\n"
        "cache:\n  dir: /from/file\n",
    )
    environ = {
        "HUB_MIRROR_SERVER_PORT": "9002",
        "HUB_MIRROR_UPSTREAM_URL": "http://env.example",
        "HUB_MIRROR_CACHE_DIR": "/from/env",
    }
    overrides = {"server": {"port": 9003}, "cache": {"dir": "/from/flags"}}
    config = load_config(path, overrides, environ=environ)
    assert config.server.host == "0.0.0.0"  # file only
    assert config.upstream.read_timeout == 5.0  # file only
    assert config.upstream.url == "http://env.example"  # env beats file
    assert config.server.port == 9003  # flags beat env and file
    assert config.cache.dir == "/from/flags"
    assert config.upstream.connect_timeout == 10.0  # untouched default


def test_flags_left_unset_do_not_override(tmp_path: Path) -> None:
    # The CLI passes None for every flag the user did not give.
    path = write_yaml(tmp_path, "server:\n  port: 9001\n")
    config = load_config(path, {"server": {"port": None, "host": None}}, environ={"HUB_MIRROR_SERVER_HOST": "::1"})
    assert (config.server.host, config.server.port) == ("::1", 9001)


def test_environ_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUB_MIRROR_SERVER_PORT", "9100")
    assert load_config(None).server.port == 9100


def test_unrelated_environment_variables_are_ignored() -> None:
    config = load_config(None, environ={"PORT": "1", "HUB_MIRRORX_SERVER_PORT": "2", "SERVER_PORT": "3"})
    assert config.server.port == 8090


@pytest.mark.parametrize(
    ("name", "value", "section", "key", "expected"),
    [
        ("HUB_MIRROR_SERVER_PORT", "9000", "server", "port", 9000),
        ("HUB_MIRROR_UPSTREAM_MAX_CONNECTIONS", " 12 ", "upstream", "max_connections", 12),
        ("HUB_MIRROR_UPSTREAM_CONNECT_TIMEOUT", "2.5", "upstream", "connect_timeout", 2.5),
        ("HUB_MIRROR_CACHE_REVISION_TTL", "0", "cache", "revision_ttl", 0.0),
        ("HUB_MIRROR_CACHE_CHUNK_SIZE", "65536", "cache", "chunk_size", 65536),
        ("HUB_MIRROR_HUB_STRIP_XET", "false", "hub", "strip_xet", False),
        ("HUB_MIRROR_HUB_STRIP_XET", "0", "hub", "strip_xet", False),
        ("HUB_MIRROR_HUB_STRIP_XET", "off", "hub", "strip_xet", False),
        ("HUB_MIRROR_HUB_STRIP_XET", "No", "hub", "strip_xet", False),
        ("HUB_MIRROR_HUB_STRIP_XET", "TRUE", "hub", "strip_xet", True),
        ("HUB_MIRROR_HUB_STRIP_XET", "yes", "hub", "strip_xet", True),
        ("HUB_MIRROR_LOG_FORMAT", "json", "log", "format", "json"),
    ],
)
def test_environment_strings_are_coerced(name: str, value: str, section: str, key: str, expected: Any) -> None:
    got = getattr(getattr(load_config(None, environ={name: value}), section), key)
    assert got == expected
    assert type(got) is type(expected)


def test_yaml_scalars_are_coerced(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "server:\n  port: '9005'\nupstream:\n  read_timeout: 7\nhub:\n  strip_xet: 'no'\n")
    config = load_config(path, environ={})
    assert config.server.port == 9005
    assert config.upstream.read_timeout == 7.0 and isinstance(config.upstream.read_timeout, float)
    assert config.hub.strip_xet is False


def test_trailing_slash_is_dropped_from_urls() -> None:
    config = load_config(
        None, {"upstream": {"url": "https://hub.example/"}, "server": {"public_url": "https://m.example/"}}, environ={}
    )
    assert (config.upstream.url, config.server.public_url) == ("https://hub.example", "https://m.example")


# --- errors ---------------------------------------------------------------------------------------


def test_unknown_section_in_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "srever:\n  port: 1\n")
    with pytest.raises(ConfigError, match=r"unknown section 'srever'") as err:
        load_config(path, environ={})
    assert str(path) in str(err.value)


def test_unknown_key_in_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key server\.prot"):
        load_config(write_yaml(tmp_path, "server:\n  prot: 1\n"), environ={})


def test_unknown_key_in_environment_names_the_variable_family() -> None:
    with pytest.raises(ConfigError, match=r"unknown key server\.prot.*HUB_MIRROR_"):
        load_config(None, environ={"HUB_MIRROR_SERVER_PROT": "1"})


def test_unknown_section_or_key_in_flags() -> None:
    with pytest.raises(ConfigError, match=r"flags: unknown section 'nope'"):
        load_config(None, {"nope": {"x": 1}}, environ={})
    with pytest.raises(ConfigError, match=r"flags: unknown key cache\.nope"):
        load_config(None, {"cache": {"nope": 1}}, environ={})


def test_section_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"section 'server' must be a mapping"):
        load_config(write_yaml(tmp_path, "server: 8090\n"), environ={})


def test_file_must_hold_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"must hold a mapping of sections"):
        load_config(write_yaml(tmp_path, "- server\n- port\n"), environ={})


@pytest.mark.parametrize(
    ("environ", "pattern"),
    [
        ({"HUB_MIRROR_SERVER_PORT": "eighty"}, r"server\.port: cannot read 'eighty' as int"),
        ({"HUB_MIRROR_SERVER_PORT": "80.5"}, r"server\.port: cannot read '80\.5' as int"),
        ({"HUB_MIRROR_UPSTREAM_READ_TIMEOUT": "soon"}, r"upstream\.read_timeout: cannot read 'soon' as float"),
        ({"HUB_MIRROR_HUB_STRIP_XET": "maybe"}, r"hub\.strip_xet: cannot read 'maybe' as bool"),
        ({"HUB_MIRROR_HUB_XET": "bridge"}, r"hub\.xet must be 'strip' or 'serve'"),
        ({"HUB_MIRROR_HUB_XET": "serve"}, r"hub\.xet: serve needs upstream\.xet: true"),
    ],
)
def test_bad_type_from_environment(environ: dict[str, str], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, environ=environ)


def test_bad_type_from_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server\.port: cannot read True as int"):
        load_config(write_yaml(tmp_path, "server:\n  port: true\n"), environ={})
    with pytest.raises(ConfigError, match=r"server\.port: cannot read \[1\] as int"):
        load_config(write_yaml(tmp_path, "server:\n  port: [1]\n"), environ={})


def test_float_is_not_silently_truncated_to_int(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_config(write_yaml(tmp_path, "server:\n  port: 8090.7\n"), environ={})


@pytest.mark.parametrize("port", [0, -1, 65536, 100000])
def test_bad_port(port: int) -> None:
    with pytest.raises(ConfigError, match=rf"server\.port must be 1\.\.65535, got {port}"):
        load_config(None, {"server": {"port": port}}, environ={})


@pytest.mark.parametrize("port", [1, 65535])
def test_port_bounds_are_accepted(port: int) -> None:
    assert load_config(None, {"server": {"port": port}}, environ={}).server.port == port


@pytest.mark.parametrize("url", ["ftp://huggingface.co", "huggingface.co", "file:///etc/passwd", "https://", ""])
def test_upstream_url_must_be_http(url: str) -> None:
    with pytest.raises(ConfigError, match=r"upstream\.url must be an http\(s\) URL"):
        load_config(None, environ={"HUB_MIRROR_UPSTREAM_URL": url})


def test_public_url_must_be_http() -> None:
    with pytest.raises(ConfigError, match=r"server\.public_url must be an http\(s\) URL"):
        load_config(None, {"server": {"public_url": "mirror.local"}}, environ={})


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "server:\n  port: [8090\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML") as err:
        load_config(path, environ={})
    assert str(path) in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match=r"cannot read config file .*absent\.yaml: No such file"):
        load_config(path, environ={})


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"cache": {"revision_ttl": -1}}, r"cache\.revision_ttl must be >= 0"),
        ({"cache": {"chunk_size": 1024}}, r"cache\.chunk_size must be at least 4096"),
        ({"cache": {"fill_lease_ttl": 1}}, r"cache\.fill_lease_ttl must be at least 3 seconds"),
        ({"server": {"advertise_url": "10.0.0.5:8090"}}, r"server\.advertise_url must be an http\(s\) URL"),
        ({"upstream": {"max_connections": 0}}, r"upstream\.max_connections >= 1"),
        ({"storage": {"backend": "ftp"}}, r"storage\.backend must be 'local' or 's3', got 'ftp'"),
        ({"log": {"format": "xml"}}, r"log\.format must be 'text' or 'json'"),
    ],
)
def test_out_of_range_values(overrides: dict[str, dict[str, Any]], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, overrides, environ={})


# --- log level ------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["LOUD", "verbose", "", "20"])
def test_unknown_log_level_from_flags(level: str) -> None:
    # Logging set-up would quietly fall back to INFO: the operator must hear about the typo.
    with pytest.raises(
        ConfigError, match=rf"log\.level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got '{level}'"
    ):
        load_config(None, {"log": {"level": level}}, environ={})


def test_unknown_log_level_from_environment() -> None:
    with pytest.raises(ConfigError, match=r"log\.level must be one of .*got 'LOUD'"):
        load_config(None, environ={"HUB_MIRROR_LOG_LEVEL": "LOUD"})


def test_unknown_log_level_from_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"log\.level must be one of .*got 'LOUD'"):
        load_config(write_yaml(tmp_path, "log:\n  level: LOUD\n"), environ={})


@pytest.mark.parametrize(("given", "expected"), [("debug", "DEBUG"), ("Warning", "WARNING"), ("ERROR", "ERROR")])
def test_log_level_is_case_insensitive(given: str, expected: str) -> None:
    assert load_config(None, environ={"HUB_MIRROR_LOG_LEVEL": given}).log.level == expected
