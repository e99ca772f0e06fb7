"""The docs cannot drift from the code: every config key, flag, admin subcommand and exit code is documented.

Keys come from the typed dataclasses in mirror/config.py, flags and subcommands from the argparse
parser itself, so a new one fails here until it is documented.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from mirror.admin.client import ExitCode
from mirror.cli import _parser
from mirror.config import Config

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
ADMIN = (ROOT / "docs" / "admin.md").read_text()
README = (ROOT / "README.md").read_text()
EXAMPLE = yaml.safe_load((ROOT / "config" / "mirror.example.yaml").read_text())
ADMIN_COMMANDS = ("allow", "sync", "status")


def config_keys() -> dict[str, Any]:
    """`section.key` -> built-in default, for every key the config accepts."""
    keys: dict[str, Any] = {}
    for section in dataclasses.fields(Config):
        for key in dataclasses.fields(getattr(Config(), section.name)):
            keys[f"{section.name}.{key.name}"] = getattr(getattr(Config(), section.name), key.name)
    return keys


KEYS = config_keys()


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def long_options(parser: argparse.ArgumentParser) -> list[str]:
    return [o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"]


def admin_command_lines() -> dict[str, argparse.ArgumentParser]:
    """'allow add' -> its parser, for every admin command a person types."""
    out: dict[str, argparse.ArgumentParser] = {}
    for name, parser in subparsers(_parser()).items():
        if name not in ADMIN_COMMANDS:
            continue
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            out.update({f"{name} {sub}": p for sub, p in subparsers(parser).items()})
        else:
            out[name] = parser
    return out


def table_rows(markdown: str) -> dict[str, list[str]]:
    """First cell (without backticks) -> the other cells, for every row of every table."""
    rows: dict[str, list[str]] = {}
    for line in markdown.splitlines():
        match = re.fullmatch(r"\|\s*`([^`]+)`\s*\|(.*)\|", line.strip())
        if match:
            rows[match.group(1)] = [cell.strip() for cell in re.split(r"(?<!\\)\|", match.group(2))]
    return rows


def documented_default(value: Any) -> str:
    """How a default is written in the docs' default column."""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "":
        return "empty"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    return f"`{value}`"


def test_the_walk_finds_the_keys_it_should() -> None:
    # Guards the test itself: an empty walk would approve any docs.
    assert {"server.advertise_url", "cache.fill_lease_ttl", "storage.s3_parts_in_flight", "sync.tick"} <= set(KEYS)
    assert {"--config", "--enforce-allowlist", "--log-level"} <= set(long_options(subparsers(_parser())["serve"]))
    assert set(admin_command_lines()) == {"allow list", "allow add", "allow remove", "sync", "status"}


@pytest.mark.parametrize("key", sorted(KEYS))
def test_every_key_is_in_the_configuration_reference_with_its_default(key: str) -> None:
    rows = table_rows(CONFIGURATION)
    assert key in rows, f"docs/configuration.md has no table row for `{key}`"
    default, meaning = rows[key][0], rows[key][1]
    assert default == documented_default(KEYS[key]), f"{key}: docs say {default}, the code {KEYS[key]!r}"
    assert meaning, f"{key} has no description"


@pytest.mark.parametrize("key", sorted(KEYS))
def test_every_key_is_in_the_example_file_with_its_default(key: str) -> None:
    section, name = key.split(".")
    assert name in (EXAMPLE.get(section) or {}), f"config/mirror.example.yaml has no {key}"
    # The file says its values are the built-in defaults: it is what operators copy.
    assert EXAMPLE[section][name] == KEYS[key], f"{key}: the example says {EXAMPLE[section][name]!r}"


def test_documented_keys_exist() -> None:
    # The other way round: no row for a key that was renamed or removed.
    documented = {k for k in table_rows(CONFIGURATION) if re.fullmatch(r"[a-z0-9_]+\.[a-z0-9_]+", k)}
    assert documented - set(KEYS) == set()
    example = {f"{s}.{k}" for s, values in EXAMPLE.items() for k in values}
    assert example - set(KEYS) == set()


@pytest.mark.parametrize("flag", long_options(subparsers(_parser())["serve"]))
def test_every_serve_flag_is_documented(flag: str) -> None:
    assert re.search(rf"`{re.escape(flag)}[ `]", CONFIGURATION), f"docs/configuration.md does not mention `{flag}`"


@pytest.mark.parametrize("command", sorted(admin_command_lines()))
def test_every_admin_command_and_its_options_are_documented(command: str) -> None:
    assert f"hub-mirror {command}" in ADMIN, f"docs/admin.md never shows `hub-mirror {command}`"
    for option in long_options(admin_command_lines()[command]):
        assert re.search(rf"{re.escape(option)}\b", ADMIN), f"docs/admin.md does not mention {option} ({command})"


@pytest.mark.parametrize("code", list(ExitCode), ids=lambda c: c.name)
def test_every_admin_exit_code_is_documented(code: ExitCode) -> None:
    assert str(int(code)) in table_rows(ADMIN), f"docs/admin.md has no exit code row for {int(code)} ({code.name})"


def test_readme_states_the_default_log_format() -> None:
    # It once promised JSON access logs while the default is text.
    assert Config().log.format == "text"
    assert "JSON access logs" not in README
    assert "text by default" in README and "--log-format json" in README
