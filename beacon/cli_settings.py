"""`beacon settings`: what this environment configures, variable by variable, and the documentation's tables.

An operator asks "which settings did this pod get, and from where?": every variable with the value that applies
(a secret as `***`) and whether it came from the environment, a `<NAME>_FILE`, or the default. `--markdown`
prints the configuration tables the README and docs/connectors.md carry, generated from the settings models
(tests/test_settings.py checks the documents hold them).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from beacon import environment
from beacon.cli_commands import table
from beacon.logs import REDACTED
from beacon.settings import FILE_SUFFIX, MODELS, read_secret_files


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `beacon settings`."""
    command = commands.add_parser(
        "settings",
        help="every BEACON_* variable: the value that applies here and where it comes from",
        description="Read the settings as `serve` would (a bad one is refused the same way) and list every variable "
        "with its value (secrets as ***) and its source: the environment, a _FILE, or the default.",
    )
    command.add_argument(
        "--markdown", action="store_true", help="print the configuration tables of the README and docs instead"
    )


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Print the settings of `env` (already checked by `Settings.from_env`), or the documentation's tables."""
    if args.markdown:
        print(markdown())
        return 0
    resolved, from_files = read_secret_files(env)
    rows = [_row(variable, resolved, from_files) for model in MODELS for variable in environment.variables(model)]
    table(["variable", "value", "from"], rows)
    return 0


# Where each model's table is published.
DOCUMENTS = ("README.md", "docs/connectors.md")


def markdown() -> str:
    """The README's table (Beacon's own settings), then docs/connectors.md's (the connectors'), each after a
    comment naming its document."""
    return "\n".join(
        f"<!-- {document} -->\n{environment.markdown_table(model)}"
        for document, model in zip(DOCUMENTS, MODELS, strict=True)
    )


def _row(variable: environment.Variable, env: Mapping[str, str], from_files: frozenset[str]) -> list[str]:
    """The variable's name as set, its value (a secret as ***) and where it came from; or its default."""
    found = environment.setting_in(variable, env)
    if found is None:
        return [" / ".join(variable.names), variable.default.replace("`", ""), "default"]
    name, text = found
    source = name + FILE_SUFFIX if name in from_files else "environment"
    return [name, REDACTED if variable.secret else text.strip(), source]
