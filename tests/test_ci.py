"""CI runs exactly the README's test commands, in a virtual environment."""
import re

from utils.config import REPO_ROOT

CI = REPO_ROOT / ".ci" / "run"


def readme_commands():
    readme = (REPO_ROOT / "README.md").read_text()
    section = re.search(r"## Test\n(.+?)\n## ", readme, re.S).group(1)
    return [block.strip() for block in re.findall(r"```bash\n(.+?)\n```", section, re.S)]


def test_ci_runs_the_readme_test_commands():
    commands = readme_commands()
    assert len(commands) == 2
    assert commands[0].startswith("CNN_PROFILE=smoke") and "CNN_PROFILE=full CNN_MAX_STEPS=" in commands[1]
    ci_lines = [line.strip() for line in CI.read_text().splitlines()]
    assert all(command in ci_lines for command in commands)
    assert ci_lines.index(commands[0]) < ci_lines.index(commands[1])  # smoke first
    assert "dataset-fashion-mnist" in CI.read_text()


def test_ci_installs_into_a_virtual_environment():
    lines = [line.strip() for line in CI.read_text().splitlines()]
    venv = lines.index("python3 -m venv .venv")
    assert lines[venv + 1] == ". .venv/bin/activate"
    pip = next(i for i, line in enumerate(lines) if line.startswith("python3 -m pip install"))
    assert venv < pip


def test_ci_script_stops_on_errors():
    assert "set -euo pipefail" in CI.read_text()
