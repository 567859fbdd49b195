"""How a run names its validation points: epochs, or fractions of one."""

from jaxpref.rundir import RunDir, epoch_at, period_name


def test_epoch_at_counts_whole_epochs_as_ints_and_periods_as_fractions():
    assert [epoch_at(p, 1) for p in (1, 2)] == [1, 2]
    assert all(isinstance(epoch_at(p, 1), int) for p in (1, 2))
    assert [epoch_at(p, 4) for p in (1, 2, 3, 4, 5)] == [0.25, 0.5, 0.75, 1, 1.25]
    assert epoch_at(1, 3) == 0.3333


def test_period_names_say_the_epoch_and_the_part_of_it(tmp_path):
    assert period_name(1, 1) == "epoch 2"
    assert period_name(1, 1, 3) == "epoch 2/3"
    assert period_name(5, 4, 2) == "epoch 2/2 part 2/4"
    paths = RunDir(tmp_path)
    assert paths.epoch_predictions(epoch_at(2, 1)).name == "epoch-2.csv"
    assert paths.epoch_predictions(epoch_at(3, 2)).name == "epoch-1.5.csv"
