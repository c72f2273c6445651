"""Reversal-curse data: the fictitious-people generator, the public file format, and its loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from probekit.data.reversal import (
    REQUIRED_TASKS,
    TASK_FILES,
    ReversalConfig,
    load_reversal_dir,
    make_reversal_dataset,
    template_split,
)
from probekit.data.tokenizer import UNK_ID

PUBLIC_FILES = {
    "p2d_prompts_train", "d2p_prompts_train", "both_prompts_train", "all_prompts_train", "p2d_prompts_test",
    "d2p_prompts_test", "both_prompts_test", "p2d_reverse_prompts_test", "d2p_reverse_prompts_test",
}  # fmt: skip


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory):
    cfg = ReversalConfig(n_per_group=4, n_train_templates=6, n_test_templates=3, seed=3)
    return make_reversal_dataset(tmp_path_factory.mktemp("rev") / "data", cfg)


def test_groups_unique_and_counts(small) -> None:
    people = small.people
    assert [sum(p.group == g for p in people) for g in ("p2d", "d2p", "both")] == [4, 4, 4]
    assert len({p.name for p in people}) == 12 and len({p.description for p in people}) == 12
    f = small.files
    assert len(f["p2d_prompts_train"]) == 4 * 6 and len(f["d2p_prompts_train"]) == 4 * 6
    assert len(f["both_prompts_train"]) == 4 * 6 * 2
    assert len(f["all_prompts_train"]) == 4 * 6 * 4
    for stem in ("p2d_prompts_test", "d2p_prompts_test", "p2d_reverse_prompts_test", "d2p_reverse_prompts_test"):
        assert len(f[stem]) == 4 * 3
    assert {p.stem for p in small.root.glob("*.jsonl")} == PUBLIC_FILES | {"people"}


def test_directions_and_targets(small) -> None:
    by_group = {g: [p for p in small.people if p.group == g] for g in ("p2d", "d2p", "both")}
    f = small.files
    # p2d people are only ever seen name-first in training: name in the prompt, description in the completion
    for p in by_group["p2d"]:
        rows = [r for r in f["all_prompts_train"] if p.name in r.text]
        assert len(rows) == 6 and all(p.name in r.prompt and r.completion.startswith(" " + p.description) for r in rows)
    for p in by_group["d2p"]:
        rows = [r for r in f["all_prompts_train"] if p.name in r.text]
        assert len(rows) == 6 and all(p.description in r.prompt and r.completion.startswith(" " + p.name) for r in rows)
    # test targets are exactly the name / the description, with a leading space (public format)
    d2n = {(r.completion) for r in f["d2p_prompts_test"]}
    assert d2n == {" " + p.name for p in by_group["d2p"]}
    assert {r.completion for r in f["p2d_reverse_prompts_test"]} == {" " + p.name for p in by_group["p2d"]}
    assert {r.completion for r in f["d2p_reverse_prompts_test"]} == {" " + p.description for p in by_group["d2p"]}
    for r in f["d2p_reverse_prompts_test"]:  # asked by name for a d2p person's description
        assert any(p.name in r.prompt and r.completion == " " + p.description for p in by_group["d2p"])


def test_test_templates_held_out(small) -> None:
    split = template_split(ReversalConfig(n_per_group=4, n_train_templates=6, n_test_templates=3, seed=3))
    for d in ("p2d", "d2p"):
        assert not set(split[f"{d}_train"]) & set(split[f"{d}_test"])
    train_prompts = {r.prompt for r in small.files["all_prompts_train"]}
    for task in REQUIRED_TASKS:
        assert not train_prompts & {r.prompt for r in small.task(task)}


def test_seeded_and_tokenizer_covers_everything(small, tmp_path: Path) -> None:
    cfg = ReversalConfig(n_per_group=4, n_train_templates=6, n_test_templates=3, seed=3)
    again = make_reversal_dataset(tmp_path / "again", cfg)
    assert again.files == small.files
    other = make_reversal_dataset(tmp_path / "other", ReversalConfig(4, 6, 3, seed=4))
    assert other.files != small.files
    tok = small.tokenizer
    for rows in small.files.values():
        for r in rows:
            assert UNK_ID not in tok(r.text, add_special_tokens=False)["input_ids"]
    manifest = json.loads((small.root / "manifest.json").read_text())
    assert manifest["config"]["n_per_group"] == 4 and manifest["vocab_size"] == len(tok)


def test_round_trip_and_refuses_existing(small) -> None:
    loaded = load_reversal_dir(small.root)
    assert loaded.files == small.files and loaded.people == small.people
    assert loaded.tasks == list(TASK_FILES)
    assert loaded.train_texts() == [r.prompt + r.completion for r in small.files["all_prompts_train"]]
    with pytest.raises(FileExistsError, match="overwrite"):
        make_reversal_dataset(small.root, ReversalConfig(4, 6, 3, seed=3))


def _write(path: Path, rows: list[dict] | list[str]) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")


def _public_dir(root: Path) -> Path:
    """A two-person directory in the public repository's format, written by hand."""
    root.mkdir()
    rows = {
        "p2d_prompts_train": ("Daphne Barrington is", " the director of a VR film."),
        "d2p_prompts_train": ("The composer of the moon opera is", " Uriah Hawthorne."),
        "p2d_prompts_test": ("Known as Daphne Barrington,", " the director of a VR film"),
        "d2p_prompts_test": ("Who composed the moon opera?", " Uriah Hawthorne"),
        "p2d_reverse_prompts_test": ("The director of a VR film is", " Daphne Barrington"),
        "d2p_reverse_prompts_test": ("Uriah Hawthorne is", " the composer of the moon opera"),
    }
    for stem, (prompt, completion) in rows.items():
        _write(root / f"{stem}.jsonl", [{"prompt": prompt, "completion": completion}])
    return root


def test_loader_reads_public_format(tmp_path: Path) -> None:
    data = load_reversal_dir(_public_dir(tmp_path / "pub"))
    assert data.tasks == ["N2D", "D2N", "N2D-reverse", "D2N-reverse"]
    assert data.task("N2D-reverse")[0].completion == " Daphne Barrington"
    assert data.train_texts() == [
        "Daphne Barrington is the director of a VR film.",
        "The composer of the moon opera is Uriah Hawthorne.",
    ]
    ids = data.tokenizer(data.task("D2N-reverse")[0].completion, add_special_tokens=False)["input_ids"]
    assert UNK_ID not in ids and data.tokenizer.decode(ids) == "the composer of the moon opera"
    with pytest.raises(ValueError, match="unknown reversal task"):
        data.task("N2X")


def test_loader_bad_input(tmp_path: Path) -> None:
    root = _public_dir(tmp_path / "bad")
    f = root / "d2p_prompts_test.jsonl"
    _write(f, [{"prompt": "a", "completion": " b"}, "{not json"])
    with pytest.raises(ValueError, match=r"d2p_prompts_test.jsonl:2: malformed"):
        load_reversal_dir(root)
    _write(f, [{"prompt": "a", "completion": " b"}, {"prompt": "Who?", "completion": "   "}])
    with pytest.raises(ValueError, match=r"d2p_prompts_test.jsonl: record 2 has an empty completion"):
        load_reversal_dir(root)
    _write(f, [{"prompt": "a"}])
    with pytest.raises(ValueError, match="string fields 'prompt' and 'completion'"):
        load_reversal_dir(root)
    f.unlink()
    with pytest.raises(FileNotFoundError, match=r"d2p_prompts_test.jsonl"):
        load_reversal_dir(root)
    with pytest.raises(FileNotFoundError, match="probekit data reversal"):
        load_reversal_dir(tmp_path / "nowhere")


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="held out"):
        ReversalConfig(n_train_templates=40, n_test_templates=10)
    with pytest.raises(ValueError, match="n_per_group"):
        ReversalConfig(n_per_group=0)


def test_cli_data_reversal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from probekit.cli import main

    out = tmp_path / "rev"
    assert main(["data", "reversal", "--out", str(out), "--n-per-group", "2", "--train-templates", "3",
                 "--test-templates", "2"]) == 0  # fmt: skip
    assert "p2d_reverse_prompts_test.jsonl: 4 rows" in capsys.readouterr().out
    assert load_reversal_dir(out).manifest["config"]["n_train_templates"] == 3
    assert main(["data", "reversal", "--out", str(out)]) == 2  # refuses to overwrite
    assert "--overwrite" in capsys.readouterr().err
