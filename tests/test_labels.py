from pathlib import Path

import pytest

from bot.labels import REQUIRED_SETS, LabelSetError, load_label_sets, parse_label_file

SHIPPED = Path(__file__).parent.parent / "labels"


def test_shipped_label_sets_load():
    sets = load_label_sets(SHIPPED)
    for name in (*REQUIRED_SETS, "sentiment"):
        assert name in sets
    assert sets["objects"].prompts[0] == f"a photo of a {sets['objects'].labels[0]}."
    assert sets["sentiment"].labels == ("negative", "neutral", "positive")
    assert "|" not in sets["sentiment"].prompts[0]


def test_template_top_k_and_own_prompt(tmp_path):
    path = tmp_path / "pets.txt"
    path.write_text("# template: a picture of my {}\n# top_k: 9\ndog\n\ncat | a grumpy cat\n")
    label_set = parse_label_file(path)
    assert label_set.labels == ("dog", "cat")
    assert label_set.prompts == ("a picture of my dog", "a grumpy cat")
    assert label_set.top_k == 2  # clamped to the number of labels


def test_fingerprint_changes_with_prompts(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("dog\n")
    first = parse_label_file(path).fingerprint
    path.write_text("# template: a drawing of {}\ndog\n")
    assert parse_label_file(path).fingerprint != first


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no labels"),
        ("dog\ndog\n", "duplicate label"),
        ("# template: no placeholder\ndog\n", "template must contain"),
        ("# top_k: many\ndog\n", "top_k must be a whole number"),
        (" | prompt only\n", "empty label"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(LabelSetError, match=message) as error:
        parse_label_file(path)
    assert "bad.txt" in str(error.value)


def test_missing_required_set(tmp_path):
    (tmp_path / "objects.txt").write_text("dog\n")
    with pytest.raises(LabelSetError, match="missing label sets: scenes"):
        load_label_sets(tmp_path)
