"""jaxpref.data.sources: one reader for arena CSVs, preference files, datasets save_to_disk
directories and folders of Parquet shards; errors name the file (the shard), row and field;
a training on preference files with a separate validation file."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest
from conftest import (
    BAD,
    FILLER,
    GOOD,
    run_commands,
    tiny_run_args,
    write_parquet_shards,
    write_saved_dataset,
)

from jaxpref.data import arena, preferences, sources
from jaxpref.data.arena import DataError

FIXTURES = Path(__file__).parent / "fixtures"


def records_of(name: str) -> list[dict]:
    """The records of a JSON-lines fixture."""
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]


def standard_pairs(n: int) -> list[dict]:
    """`n` TRL standard records, one prompt each."""
    return [
        {"prompt": f"Question {i}?", "chosen": f"Good answer {i}.", "rejected": f"Bad {i}."}
        for i in range(n)
    ]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def write_parquet(path: Path, records: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def every_format(root: Path, records: list[dict], shards: int = 3) -> dict[str, Path]:
    """The same records, named `pairs` in each format (so their row ids agree)."""
    return {
        "jsonl": write_jsonl(root / "pairs.jsonl", records),
        "parquet": write_parquet(root / "pairs.parquet", records),
        "shards": write_parquet_shards(root / "shards" / "pairs", records, shards),
        "saved": write_saved_dataset(root / "saved" / "pairs", records, shards),
    }


@pytest.mark.parametrize("name", ["trl_standard.jsonl", "trl_conversational.jsonl"])
def test_every_format_reads_into_the_same_frame(tmp_path, name):
    records = records_of(name) * 4  # 8 or 12 rows: shards of several record batches
    paths = every_format(tmp_path, records)
    expected = sources.read_rows(paths["jsonl"])
    assert list(expected["id"]) == [f"pairs-{i}" for i in range(1, len(records) + 1)]
    assert set(expected["label"]) == {0, 1}
    for kind, path in paths.items():
        pd.testing.assert_frame_equal(sources.read_rows(path), expected, obj=kind)
        unlabelled = sources.read_rows(path, labelled=False)
        pd.testing.assert_frame_equal(unlabelled, expected.drop(columns="label"), obj=kind)
    # The A/B order is the fixed ROW_ORDER_SEED's, as read_preferences draws it.
    direct = preferences.read_chosen_rejected(paths["jsonl"], sources.ROW_ORDER_SEED, "pairs")
    pd.testing.assert_frame_equal(expected, direct)


@pytest.mark.parametrize(
    ("name", "content", "kind"),
    [
        ("rows.csv", b"id,prompt\n", sources.ARENA_CSV),
        ("rows.txt", b"id,prompt,response_a\n", sources.ARENA_CSV),
        ("rows.txt", b'\xef\xbb\xbf \n{"chosen": "a"}\n', sources.PREFERENCE_FILE),
        ("rows.jsonl.gz", b"", sources.PREFERENCE_FILE),
        ("rows.bin", b"PAR1....", sources.PREFERENCE_FILE),
        ("rows.bin", b"\x1f\x8b\x08", sources.PREFERENCE_FILE),
    ],
)
def test_files_are_told_apart_by_name_then_content(tmp_path, name, content, kind):
    path = tmp_path / name
    path.write_bytes(content)
    assert sources.source_kind(path) == kind


@pytest.mark.parametrize(
    ("path", "labelled"), [(arena.DEFAULT_TRAIN_CSV, True), (arena.DEFAULT_TEST_CSV, False)]
)
def test_arena_csv_reads_as_read_arena_csv(path, labelled):
    expected = arena.read_arena_csv(path, labelled)
    pd.testing.assert_frame_equal(sources.read_rows(path, labelled), expected)


def test_a_directory_of_neither_kind_says_what_it_lacks(tmp_path):
    (tmp_path / "notes.jsonl").write_text("{}\n")
    with pytest.raises(DataError) as caught:
        sources.read_rows(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path}: neither a datasets save_to_disk directory (no state.json) nor a folder "
        "of Parquet shards (no *.parquet file)"
    )


def test_a_dataset_dict_directory_names_its_splits(tmp_path):
    for split in ("test", "train"):
        write_saved_dataset(tmp_path / split, standard_pairs(2), 1)
    (tmp_path / "dataset_dict.json").write_text('{"splits": ["train", "test"]}')
    with pytest.raises(DataError, match=r"DatasetDict directory .*\(test, train\), e\.g\. "):
        sources.read_rows(tmp_path)
    assert len(sources.read_rows(tmp_path / "train")) == 2


def test_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(DataError, match="none.jsonl: file not found"):
        sources.read_rows(tmp_path / "none.jsonl")


@pytest.mark.parametrize("kind", ["shards", "saved"])
def test_a_bad_record_names_its_shard_row_and_field(tmp_path, kind):
    records = standard_pairs(7)  # shards of 3, 2 and 2 rows: record 5 is the third's first
    records[5]["chosen"] = "\n\nHuman: hi\n\nAssistant: yes"  # after a prompt: not HH text
    if kind == "shards":
        directory = write_parquet_shards(tmp_path / "pairs", records, 3)
        shard = directory / "train-00002-of-00003.parquet"
    else:
        directory = write_saved_dataset(tmp_path / "pairs", records, 3)
        shard = directory / "data-00002-of-00003.arrow"
    with pytest.raises(DataError) as caught:
        sources.read_rows(directory)
    err = caught.value
    assert (err.path, err.line, err.unit, err.column) == (str(shard), 1, "row", "chosen")
    assert str(err).startswith(f"{shard}, row 1, column 'chosen': text before the first Human")


def test_a_shard_without_the_columns_is_named(tmp_path):
    directory = write_parquet_shards(tmp_path / "pairs", standard_pairs(4), 2)
    write_parquet(directory / "train-00001-of-00002.parquet", [{"text": "x"}])
    with pytest.raises(DataError, match=r"train-00001-of-00002.parquet, column 'chosen': missing"):
        sources.read_rows(directory)


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ("{", "state.json: not valid JSON"),
        ('{"_data_files": []}', "state.json, column '_data_files': expected a list"),
        ('{"_data_files": [{"filename": 3}]}', "column '_data_files': expected a list"),
        ('{"_data_files": [{"filename": "../x.arrow"}]}', "'../x.arrow' is not the name of a file"),
        ('{"_data_files": [{"filename": "gone.arrow"}]}', "gone.arrow: file not found"),
    ],
)
def test_a_broken_state_json_is_a_data_error(tmp_path, state, message):
    directory = write_saved_dataset(tmp_path / "pairs", standard_pairs(2), 1)
    (directory / "state.json").write_text(state)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(".", r"\.")):
        sources.read_rows(directory)


def test_a_corrupt_arrow_file_is_one_line_naming_it(tmp_path):
    directory = write_saved_dataset(tmp_path / "pairs", standard_pairs(4), 2)
    shard = directory / "data-00001-of-00002.arrow"
    shard.write_bytes(shard.read_bytes()[:50])
    with pytest.raises(DataError, match="not a readable Arrow stream file") as caught:
        sources.read_rows(directory)
    assert caught.value.path == str(shard) and "\n" not in str(caught.value)


def test_an_empty_dataset_and_an_arena_csv_as_pairs_are_refused(tmp_path):
    import pyarrow as pa

    schema = pa.schema([("chosen", pa.string()), ("rejected", pa.string())])
    directory = tmp_path / "pairs"
    directory.mkdir()
    pa.parquet.write_table(schema.empty_table(), directory / "train.parquet")
    with pytest.raises(DataError, match="a folder of Parquet shards without rows"):
        sources.read_rows(directory)
    with pytest.raises(DataError, match="an arena CSV, expected preference records"):
        sources.read_pairs(arena.DEFAULT_TRAIN_CSV)


def test_training_and_validation_files_must_not_share_ids(tmp_path):
    train = sources.read_rows(write_jsonl(tmp_path / "a" / "pairs.jsonl", standard_pairs(3)))
    valid = sources.read_rows(write_jsonl(tmp_path / "b" / "pairs.jsonl", standard_pairs(2)))
    with pytest.raises(DataError) as caught:
        sources.check_distinct_ids({"a/pairs.jsonl": train, "b/pairs.jsonl": valid})
    assert str(caught.value) == (
        "b/pairs.jsonl, line 1, column 'id': id 'pairs-1' is also in a/pairs.jsonl: the "
        "training and validation files must not share ids"
    )


def learnable_pairs(path: Path, rows: int, seed: int) -> Path:
    """TRL standard records whose chosen reply holds a 'good' word and rejected one a 'bad'."""
    rng = random.Random(seed)

    def reply(words: list[str]) -> str:
        return " ".join([*rng.sample(FILLER, 5), rng.choice(words)])

    records = [
        {"prompt": f"question {rng.randint(0, 999)}", "chosen": reply(GOOD), "rejected": reply(BAD)}
        for _ in range(rows)
    ]
    return write_jsonl(path, records)


@pytest.mark.slow
def test_training_on_preference_files_beats_the_prior(tiny_preset, tmp_path):
    """--train-file prefs.jsonl --valid-file prefs2.jsonl: no split, no tie rows; the model
    beats the (two-class) class prior on the validation file, evaluate reads it back and infer
    predicts it unlabelled, in read_rows' order."""
    train = learnable_pairs(tmp_path / "prefs.jsonl", 48, seed=0)
    valid = learnable_pairs(tmp_path / "prefs2.jsonl", 24, seed=1)
    run_dir = tmp_path / "run"
    args = tiny_run_args(tiny_preset, train, run_dir)
    args[args.index("--train-csv")] = "--train-file"
    result = run_commands(
        ["train", *args, "--valid-file", valid, "--epochs", "1", "--learning-rate", "1e-2"],
        ["evaluate", "--run-dir", run_dir],
        ["infer", "--devices", "cpu", "--run-dir", run_dir, "--test-file", valid,
         "--output", tmp_path / "predicted.csv"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_val_log_loss"] < summary["prior_val_log_loss"] - 0.02, summary
    split = pd.read_csv(run_dir / "split.csv", dtype=str)
    assert split["split"].value_counts().to_dict() == {"train": 48, "valid": 24}
    config = json.loads((run_dir / "config.json").read_text())["data"]
    assert (config["train_file"], config["valid_file"]) == (str(train), str(valid))
    assert config["valid_fraction"] is None
    assert "no winner_tie rows in training or validation" in (run_dir / "train.log").read_text()
    report = json.loads((run_dir / "evaluation" / "evaluation.json").read_text())
    assert report["rows"] == 24 and report["rows_in_training_split"] == 0
    assert report["scores"]["model"]["log_loss"] == pytest.approx(
        summary["calibrated_val_log_loss"], abs=1e-4
    )
    predicted = pd.read_csv(tmp_path / "predicted.csv", dtype={"id": str})
    assert list(predicted["id"]) == list(sources.read_rows(valid)["id"])


def test_a_subset_field_is_kept_in_every_format(tmp_path):
    """RewardBench's layout: prompt, chosen, rejected, subset."""
    records = [{**r, "subset": ("chat", "code")[i % 2]} for i, r in enumerate(standard_pairs(6))]
    columns = ["id", "prompt", "response_a", "response_b", "label", "subset", "line"]
    for kind, path in every_format(tmp_path, records).items():
        frame = sources.read_rows(path)
        assert frame.columns.tolist() == columns, kind
        assert frame["subset"].tolist() == ["chat", "code"] * 3, kind
        assert "subset" in sources.read_rows(path, labelled=False).columns
    path = tmp_path / "pairs.jsonl"
    records[3].pop("subset")
    with pytest.raises(DataError, match=r"pairs.jsonl, line 4, column 'subset': missing or null"):
        sources.read_rows(write_jsonl(path, records))
    records[3]["subset"] = 3
    with pytest.raises(DataError, match=r"line 4, column 'subset': expected a string, got a n"):
        sources.read_rows(write_jsonl(path, records))


def test_a_margin_field_is_read_as_floats_in_every_format(tmp_path):
    """TRL's reward-trainer margin (UltraFeedback score differences, say)."""
    margins = [0, 1.5, 2, 0.25, 3, 1]
    records = [{**r, "margin": m} for r, m in zip(standard_pairs(6), margins, strict=True)]
    columns = ["id", "prompt", "response_a", "response_b", "label", "margin", "line"]
    for kind, path in every_format(tmp_path, records).items():
        frame = sources.read_rows(path)
        assert frame.columns.tolist() == columns, kind
        assert frame["margin"].dtype == "float64" and frame["margin"].tolist() == margins, kind
    assert "margin" not in sources.read_rows(arena.DEFAULT_TRAIN_CSV)
    path = tmp_path / "pairs.jsonl"
    for bad, detail in [("1.5", "expected a number, got a string"),
                        (True, "expected a number, got a boolean"),
                        (float("inf"), "expected a finite number, got inf"),
                        (None, "missing or null, but other records have a margin")]:  # fmt: skip
        records[3]["margin"] = bad
        with pytest.raises(DataError, match=rf"pairs.jsonl, line 4, column 'margin': {detail}"):
            sources.read_rows(write_jsonl(path, records))


def test_an_arena_csv_keeps_its_subset_column(tmp_path):
    path = tmp_path / "arena.csv"
    path.write_text(
        "id,prompt,response_a,response_b,winner_model_a,winner_model_b,winner_tie,subset\n"
        '1,"[""hi""]","[""a""]","[""b""]",1,0,0,chat\n'
        '2,"[""hi""]","[""a""]","[""b""]",0,0,1,math\n'
    )
    assert sources.read_rows(path)["subset"].tolist() == ["chat", "math"]
    assert "subset" not in arena.read_arena_csv(arena.DEFAULT_TEST_CSV, labelled=False)
