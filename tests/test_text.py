import numpy as np
import pandas as pd

from jaxpref.data import arena, text


def test_single_turn_is_prompt_and_response():
    assert text.format_side(["Hi?"], ["Hello."]) == ("Hi?", "Hello.")


def test_multi_turn_interleaves_earlier_turns_and_ends_with_last_prompt():
    context, response = text.format_side(["p1", "p2", "p3"], ["r1", "r2", "r3"])
    assert response == "r3"
    assert context == "User: p1\nAssistant: r1\n\nUser: p2\nAssistant: r2\n\nUser: p3"
    assert context.index("p1") < context.index("r1") < context.index("p2") < context.index("p3")


def test_null_turns_become_empty_text():
    assert text.format_side([None], [None]) == ("", "")
    context, response = text.format_side(["p1", None], [None, "r2"])
    assert context == "User: p1\nAssistant: \n\nUser: "
    assert response == "r2"


def test_uneven_turn_counts_keep_every_turn():
    context, response = text.format_side(["p1", "p2"], ["r1"])
    assert "p1" in context and "r1" in context and "p2" in context
    assert response == ""


def test_format_pairs_on_embedded_sample_keeps_every_row_and_side():
    frame = arena.read_arena_csv(arena.DEFAULT_TRAIN_CSV, labelled=True)
    pairs = text.format_pairs(frame)
    assert set(pairs) == set(text.FEATURE_KEYS)
    assert all(len(v) == len(frame) for v in pairs.values())
    multi = frame["prompt"].map(len) > 1
    row = int(np.flatnonzero(multi.to_numpy())[0])
    assert pairs["context_a"][row] != pairs["context_b"][row]  # each side sees its own replies
    single = int(np.flatnonzero(~multi.to_numpy())[0])
    assert pairs["context_a"][single] == pairs["context_b"][single] == frame["prompt"][single][0]


def test_format_pairs_sides_follow_their_columns():
    frame = pd.DataFrame({"prompt": [["q"]], "response_a": [["A!"]], "response_b": [["B!"]]})
    pairs = text.format_pairs(frame)
    assert pairs["response_a"][0] == "A!" and pairs["response_b"][0] == "B!"


def test_turn_counts_read_the_conversation_length_back():
    single = text.format_side(["hi"], ["hello"])
    three = text.format_side(["a", "b", "c"], ["x", "y", "z"])
    pairs = {"context_a": np.asarray([single[0], three[0]], dtype=object)}
    np.testing.assert_array_equal(text.turn_counts(pairs, "a"), [1, 3])
