"""Class spec loading: .txt and .yaml formats, and every validation error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zsplg.data.classes import ClassInfo, ClassSpec, load_class_spec
from zsplg.data.errors import InputError


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _error(path: Path) -> str:
    with pytest.raises(InputError) as info:
        load_class_spec(path)
    assert info.value.path == str(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ")
    return msg


def test_input_error_str() -> None:
    err = InputError("a/b.png", "empty file")
    assert str(err) == "a/b.png: empty file"
    assert (err.path, err.reason) == ("a/b.png", "empty file")


def test_txt_ids_background_and_trailing_blanks(tmp_path: Path) -> None:
    p = _write(tmp_path, "c.txt", "  Background \ncat\n dog\n\n\n")
    spec = load_class_spec(p)
    assert spec.names == ["Background", "cat", "dog"]
    assert spec.num_classes == 3
    assert spec.background == 0
    assert spec.ignore_index == 255
    assert spec.source == str(p)
    assert spec.classes[1] == ClassInfo("cat")


def test_txt_without_background(tmp_path: Path) -> None:
    spec = load_class_spec(_write(tmp_path, "c.txt", "road\ncar\n"))
    assert spec.background is None


def test_txt_blank_line_in_middle(tmp_path: Path) -> None:
    msg = _error(_write(tmp_path, "c.txt", "road\n\ncar\n"))
    assert "line 2" in msg


def test_yaml_full(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "c.yaml",
        """
classes:
  - sky
  - name: " person "
    synonyms: [human, pedestrian]
    prompts: ["a photo of people walking."]
  - name: bg
background: bg
ignore_index: 254
""",
    )
    spec = load_class_spec(p)
    assert spec.names == ["sky", "person", "bg"]
    assert spec.classes[1].synonyms == ("human", "pedestrian")
    assert spec.classes[1].prompts == ("a photo of people walking.",)
    assert spec.classes[0] == ClassInfo("sky")
    assert spec.background == 2
    assert spec.ignore_index == 254
    d = spec.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["classes"][1] == {
        "name": "person",
        "synonyms": ["human", "pedestrian"],
        "prompts": ["a photo of people walking."],
    }
    assert d["background"] == 2 and d["ignore_index"] == 254 and d["source"] == str(p)


@pytest.mark.parametrize(
    ("background", "expected"),
    [("0", 0), ("1", 1), ("null", None), ("WATER", 1)],
)
def test_yaml_background_forms(tmp_path: Path, background: str, expected: int | None) -> None:
    p = _write(tmp_path, "c.yml", f"classes: [background, water]\nbackground: {background}\n")
    assert load_class_spec(p).background == expected


def test_yaml_background_default(tmp_path: Path) -> None:
    assert load_class_spec(_write(tmp_path, "a.yaml", "classes: [a, Background]")).background == 1
    assert load_class_spec(_write(tmp_path, "b.yaml", "classes: [a, b]")).background is None


def test_spec_is_frozen() -> None:
    spec = ClassSpec(classes=(ClassInfo("a"),), background=None)
    with pytest.raises(AttributeError):
        spec.background = 0  # type: ignore[misc]


def test_missing_file(tmp_path: Path) -> None:
    assert "not found" in _error(tmp_path / "nope.yaml")


def test_unsupported_extension(tmp_path: Path) -> None:
    assert ".json" in _error(_write(tmp_path, "c.json", "[]"))


@pytest.mark.parametrize(
    ("name", "text"),
    [("e.txt", ""), ("e2.txt", "\n\n"), ("e.yaml", "classes: []"), ("e2.yaml", "classes:")],
)
def test_empty_class_list(tmp_path: Path, name: str, text: str) -> None:
    assert "empty class list" in _error(_write(tmp_path, name, text))


@pytest.mark.parametrize(
    ("name", "text"),
    [("d.txt", "cat\ndog\nCat\n"), ("d.yaml", "classes: [cat, dog, {name: ' CAT'}]")],
)
def test_duplicate_names(tmp_path: Path, name: str, text: str) -> None:
    msg = _error(_write(tmp_path, name, text))
    assert "duplicate" in msg and "cat" in msg.lower()


def test_too_many_classes_for_ignore_index(tmp_path: Path) -> None:
    ok = _write(tmp_path, "ok.yaml", "classes: [a, b, c]\nignore_index: 3\n")
    assert load_class_spec(ok).num_classes == 3
    msg = _error(_write(tmp_path, "bad.yaml", "classes: [a, b, c, d]\nignore_index: 3\n"))
    assert "ignore_index" in msg and "4 classes" in msg
    names = "\n".join(f"c{i}" for i in range(256))
    assert "256 classes" in _error(_write(tmp_path, "big.txt", names))


def test_unknown_top_level_key(tmp_path: Path) -> None:
    assert "'palette'" in _error(_write(tmp_path, "u.yaml", "classes: [a]\npalette: voc\n"))


def test_unknown_class_key(tmp_path: Path) -> None:
    msg = _error(_write(tmp_path, "u.yaml", "classes:\n  - name: a\n    colour: red\n"))
    assert "'colour'" in msg and "classes[0]" in msg


def test_class_without_name(tmp_path: Path) -> None:
    assert "'name'" in _error(_write(tmp_path, "n.yaml", "classes:\n  - synonyms: [x]\n"))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("classes: cat", "'classes' must be a list"),
        ("classes: [{name: 3}]", "'name' must be a string"),
        ("classes: [{name: a, synonyms: b}]", "classes[0].synonyms' must be a list of strings"),
        ("classes: [{name: a, prompts: [1, 2]}]", "classes[0].prompts' must be a list of strings"),
        ("classes: [a]\nignore_index: high", "'ignore_index' must be an integer"),
        ("classes: [a]\nignore_index: 300", "'ignore_index' must be in 0..255"),
        ("classes: [a]\nbackground: [0]", "'background' must be"),
        ("classes: [a]\nbackground: true", "'background' must be"),
        ("classes: [[a]]", "classes[0] must be a string or a mapping"),
        ("- a\n- b\n", "mapping"),
    ],
)
def test_wrong_types(tmp_path: Path, text: str, needle: str) -> None:
    assert needle in _error(_write(tmp_path, "t.yaml", text))


def test_background_out_of_range(tmp_path: Path) -> None:
    msg = _error(_write(tmp_path, "b.yaml", "classes: [a, b]\nbackground: 2\n"))
    assert "'background'" in msg and "2" in msg and "out of range" in msg


def test_background_unknown_name(tmp_path: Path) -> None:
    msg = _error(_write(tmp_path, "b.yaml", "classes: [a, b]\nbackground: void\n"))
    assert "'void'" in msg


def test_invalid_yaml(tmp_path: Path) -> None:
    msg = _error(_write(tmp_path, "i.yaml", "classes: [a, b\nbackground: 0\n"))
    assert "invalid YAML" in msg
    assert "\n" not in msg
