import nbformat
import pytest

from utils import export


def test_models_module_is_up_to_date():
    """utils/models.py must be exactly what the notebooks' # @save cells produce."""
    assert export.TARGET.read_text() == export.render(), \
        "utils/models.py is out of date: run `python -m utils.export`"


def _notebook(path, *sources):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(notebook, path)


def test_collects_save_cells_in_chapter_order(tmp_path):
    _notebook(tmp_path / "02_b.ipynb", "# @save\ndef second():\n    return 2")
    _notebook(tmp_path / "01_a.ipynb", "# @save\ndef first():\n    return 1", "x = 'not saved'")
    text = export.render(tmp_path)
    assert text.index("def first") < text.index("def second")
    body = text[len(export.PREAMBLE):]
    assert "not saved" not in body and "# @save" not in body
    namespace = {}
    exec(compile(text, "models", "exec"), namespace)
    assert namespace["first"]() + namespace["second"]() == 3


def test_refuses_a_name_defined_in_two_chapters(tmp_path):
    _notebook(tmp_path / "01_a.ipynb", "# @save\nclass Block: pass")
    _notebook(tmp_path / "02_b.ipynb", "# @save\nclass Block: pass")
    with pytest.raises(export.ExportError, match="Block"):
        export.render(tmp_path)


def test_refuses_saved_cells_that_import_the_module(tmp_path):
    _notebook(tmp_path / "01_a.ipynb", "# @save\nfrom utils.models import alexnet")
    with pytest.raises(export.ExportError, match="imports utils.models"):
        export.render(tmp_path)


def test_check_command_reports_stale_module(tmp_path, monkeypatch, capsys):
    target = tmp_path / "models.py"
    target.write_text("stale")
    monkeypatch.setattr(export, "TARGET", target)
    assert export.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert export.main([]) == 0
    assert export.main(["--check"]) == 0
