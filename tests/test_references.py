"""utils.references: one list of reference numbers, its markdown copy, and the protocols."""
import re
from pathlib import Path

import pytest

from utils import references

ROOT = Path(__file__).resolve().parent.parent


def test_keys_are_unique_and_sections_known():
    keys = [ref.key for ref in references.REFERENCES]
    assert len(keys) == len(set(keys))
    assert {ref.section for ref in references.REFERENCES} <= set(references.SECTIONS)


def test_every_imagenet_error_names_its_protocol():
    errors = [ref for ref in references.REFERENCES if "error" in ref.unit]
    assert errors
    for ref in errors:
        assert re.search(r"crop|dense|multi", ref.protocol), ref.key
        assert re.search(r"validation|test", ref.protocol), ref.key


def test_markdown_copy_is_up_to_date():
    assert references.main(["--check"]) == 0, "run: python -m utils.references"


def test_lookups():
    assert references.value("alexnet.grouped.params") == 60_965_224
    assert isinstance(references.value("vgg16.params"), int)
    assert references.paper_errors("googlenet")["top1"] is None
    with pytest.raises(KeyError, match="alexnet.grouped.params"):
        references.get("alexnet.grouped.parms")


def test_nothing_points_outside_the_repository():
    paths = [ROOT / "README.md", *ROOT.glob("chapters/*.ipynb"), *ROOT.glob("utils/*.py"),
             *ROOT.glob("tests/*.py")]
    outside = re.compile(r"\.\./shared|shared/REFERENCE|REFERENCE\.md")
    offenders = [p.name for p in paths if p.name != "test_references.py"
                 and outside.search(p.read_text(encoding="utf-8"))]
    assert not offenders, f"files pointing outside the repository: {offenders}"
