"""CI runs exactly the README's test command."""
import re

from utils.config import REPO_ROOT


def test_ci_runs_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"## Test\s+```bash\n(.+?)\n```", readme, re.S).group(1).strip()
    ci_lines = [line.strip() for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()]
    assert block in ci_lines
    assert "dataset-fashion-mnist" in (REPO_ROOT / ".ci" / "run").read_text()


def test_ci_script_stops_on_errors():
    assert "set -euo pipefail" in (REPO_ROOT / ".ci" / "run").read_text()
