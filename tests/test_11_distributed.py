"""Chapter 11 (distributed training): how the notebook writes and launches its scripts, and the
launch helper it uses."""
import re
import sys
from pathlib import Path

import nbformat
import pytest

from utils import distributed
from utils.config import REPO_ROOT

NOTEBOOK = REPO_ROOT / "chapters" / "11_distributed.ipynb"


def code_cells():
    return [cell.source for cell in nbformat.read(NOTEBOOK, as_version=4).cells if cell.cell_type == "code"]


def test_scripts_are_written_under_results_not_chapters():
    targets = [source.splitlines()[0] for source in code_cells() if source.startswith("%%writefile")]
    assert len(targets) >= 4
    assert all(re.fullmatch(r"%%writefile (-a )?\{scripts\}/\w+\.py", line) for line in targets), targets
    assert any('scripts = config.results_dir() / "distributed"' in source for source in code_cells())


def test_launches_use_this_python_not_whatever_torchrun_is_on_path():
    launches = [line for source in code_cells() for line in source.splitlines()
                if line.startswith("!") or "distributed.launch(" in line]
    assert launches
    shell = [line for line in launches if line.startswith("!")]
    assert all("{sys.executable} -m torch.distributed.run --standalone --nproc_per_node=2" in line
               for line in shell), shell


def test_sections_are_numbered_by_chapter():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    headings = [line for cell in notebook.cells if cell.cell_type == "markdown"
                for line in cell.source.splitlines() if re.match(r"##+ \d", line)]
    assert headings and all(re.match(r"##+ 11\.\d+", line) for line in headings), headings


def test_torchrun_command_uses_the_running_python():
    command = distributed.torchrun_command(Path("train.py"), 128, "out.json", nproc=3)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert command[3:] == ["--standalone", "--nproc_per_node=3", "train.py", "128", "out.json"]


def test_launch_reports_the_rank_that_failed(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text("import os\nfrom utils import distributed\ndistributed.setup()\n"
                      "if distributed.rank() == 1:\n    os._exit(3)\ndistributed.barrier()\n")
    with pytest.raises(distributed.DistributedError) as failure:
        distributed.launch(script, nproc=2, timeout=120, env={"OMP_NUM_THREADS": "1",
                                                             distributed.TIMEOUT_ENV: "20"})
    message = str(failure.value)
    assert "torchrun exited with status" in message and "rank      : 1" in message, message
