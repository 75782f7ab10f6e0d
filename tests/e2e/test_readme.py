"""The README cannot rot: its examples run against a real server, its tables match the code."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import settings_table
from tests.e2e.conftest import ROOT, Server

README = (ROOT / "README.md").read_text()
EXAMPLES = re.findall(r"<!-- example -->\n```bash\n(.*?)```", README, re.S)


def test_the_settings_table_is_every_setting() -> None:
    table = re.search(r"<!-- settings-table -->\n(.*?)\n<!-- /settings-table -->", README, re.S)
    assert table is not None
    assert table.group(1) == settings_table(), (
        "README's settings table is stale; regenerate it with\n"
        "python -c 'from service.settings import settings_table; print(settings_table())'"
    )


def test_ci_runs_the_readme_test_command() -> None:
    command = re.search(r"<!-- test-command -->\n```bash\n(.*?)\n```", README, re.S)
    assert command is not None and "pytest" in command.group(1)
    extracted = subprocess.run(
        ["awk", '/<!-- test-command -->/ { getline; getline; print; exit }', "README.md"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert extracted == command.group(1)
    assert "README.md" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.split("\n")[0][:40])
def test_each_readme_example_works_against_a_running_server(
    example: str, server: Server, tmp_path: Path
) -> None:
    address = server.url.removeprefix("http://")
    script = example.replace("localhost:8000", address).replace(
        "python - <<", f"{sys.executable} - <<"
    )
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    output = done.stdout.strip()
    if output.startswith("{"):
        body = json.loads(output)
        statuses = body["columns"]["status"] if "columns" in body else \
            [r["status"] for r in body["results"]]
        assert statuses and all(status == "ok" for status in statuses), output
    else:
        assert output == "ok"


def test_there_are_examples_to_run() -> None:
    assert len(EXAMPLES) >= 3
