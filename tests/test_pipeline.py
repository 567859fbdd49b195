import numpy as np
import pytest
import tensorflow as tf

from jaxpref import backbones, pipeline, text


def test_truncate_pair_keeps_context_end_and_response_start():
    context = tf.ragged.constant([list(range(10)), [1, 2], list(range(20))])
    response = tf.ragged.constant([[100, 101], list(range(100, 120)), list(range(100, 120))])
    c, r = pipeline.truncate_pair(context, response, 8)
    assert c.to_list() == [[4, 5, 6, 7, 8, 9], [1, 2], [16, 17, 18, 19]]
    assert r.to_list() == [[100, 101], list(range(100, 106)), [100, 101, 102, 103]]


def test_truncate_pair_leaves_short_pairs_alone():
    context = tf.ragged.constant([[1, 2, 3]])
    response = tf.ragged.constant([[4, 5]])
    c, r = pipeline.truncate_pair(context, response, 10)
    assert c.to_list() == [[1, 2, 3]] and r.to_list() == [[4, 5]]


def test_padded_indices_cover_every_row_once_with_weight_one():
    rows, weights = pipeline.padded_indices(10, 4)
    assert len(rows) == 12
    assert sorted(rows[weights == 1].tolist()) == list(range(10))
    assert weights[10:].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        pipeline.padded_indices(0, 4)


@pytest.fixture(scope="module")
def encoder(tiny_preset):
    preprocessor = backbones.load_preprocessor(str(tiny_preset), 32)
    return pipeline.PairEncoder(preprocessor, ("token_ids", "padding_mask"))


def _texts(n):
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    return {
        key: np.asarray(
            [f"{key} " + " ".join(words[: (i % len(words)) + 1]) * (i + 1) for i in range(n)],
            dtype=object,
        )
        for key in text.FEATURE_KEYS
    }


def test_dataset_shapes_labels_and_zero_weight_padding(encoder):
    labels = np.array([0, 1, 2, 0, 1])
    batches = list(pipeline.make_dataset(_texts(5), encoder, 4, labels=labels))
    assert len(batches) == 2
    for x, y, _ in batches:
        assert set(x) == {"token_ids", "padding_mask"}
        assert x["token_ids"].shape == (4, 2, 32) and x["token_ids"].dtype == tf.int32
        assert y.shape == (4, 3)
    weights = np.concatenate([w.numpy() for _, _, w in batches])
    got = np.concatenate([y.numpy().argmax(1) for _, y, _ in batches])
    assert weights.tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert got[:5].tolist() == labels.tolist()


def test_each_side_is_cls_context_sep_response_sep(encoder):
    (x,) = next(iter(pipeline.make_dataset(_texts(1), encoder, 1)))
    tokenizer = encoder.preprocessor.tokenizer
    ids = x["token_ids"].numpy()[0]
    mask = x["padding_mask"].numpy()[0].astype(bool)
    for side in range(2):
        real = ids[side][mask[side]]
        assert real[0] == tokenizer.cls_token_id and real[-1] == tokenizer.sep_token_id
        assert (real == tokenizer.sep_token_id).sum() == 2
        assert (ids[side][~mask[side]] == tokenizer.pad_token_id).all()


def test_long_context_keeps_its_last_tokens(encoder):
    texts = {key: np.asarray(["short"], dtype=object) for key in text.FEATURE_KEYS}
    long = " ".join(f"w{i}" for i in range(200)) + " omega"
    texts["context_a"] = np.asarray([long], dtype=object)
    (x,) = next(iter(pipeline.make_dataset(texts, encoder, 1)))
    tokenizer = encoder.preprocessor.tokenizer
    ids = x["token_ids"].numpy()[0, 0]
    assert x["padding_mask"].numpy()[0, 0].all()  # the budget is used up
    full = np.asarray(tokenizer(long)).tolist()
    first_sep = ids.tolist().index(tokenizer.sep_token_id)
    assert ids[1:first_sep].tolist() == full[-(first_sep - 1) :]


def test_processes_share_rows_without_overlap(encoder):
    labels = np.arange(10) % 3
    texts = _texts(10)
    seen = []
    for index in range(2):
        ds = pipeline.make_dataset(
            texts, encoder, 4, labels=labels, process_index=index, process_count=2
        )
        batches = list(ds)
        assert len(batches) == 3 and all(b[0]["token_ids"].shape[0] == 2 for b in batches)
        for x, _, w in batches:
            for row, weight in zip(x["token_ids"].numpy(), w.numpy(), strict=True):
                if weight:
                    seen.append(tuple(row[0]))
    expected = {
        tuple(r[0])
        for r in next(iter(pipeline.make_dataset(texts, encoder, 12)))[0]["token_ids"].numpy()
    }
    assert len(seen) == 10 and set(seen) == expected


def test_shuffle_changes_order_between_epochs_but_keeps_rows(encoder):
    labels = np.arange(16) % 3
    ds = pipeline.make_dataset(_texts(16), encoder, 4, labels=labels, shuffle=True, seed=1)
    epochs = [np.concatenate([y.numpy().argmax(1) for _, y, _ in ds]) for _ in range(2)]
    firsts = [[tuple(x["token_ids"].numpy()[0, 0]) for x, _, _ in ds] for _ in range(2)]
    assert sorted(epochs[0].tolist()) == sorted(labels.tolist())
    assert firsts[0] != firsts[1]
