"""Settings: the precision `auto` stands for on each platform, the optimizer's flags and what
config.json records."""

import json

import pytest

from jaxpref.config import PRECISIONS, ConfigError, TrainConfig, resolve_precision


@pytest.mark.parametrize(
    ("platform", "expected"),
    [("gpu", "mixed_bfloat16"), ("tpu", "mixed_bfloat16"), ("cpu", "float32")],
)
def test_auto_precision_is_bf16_on_accelerators_and_float32_on_cpu(platform, expected):
    assert resolve_precision("auto", platform) == expected


@pytest.mark.parametrize("chosen", [p for p in PRECISIONS if p != "auto"])
@pytest.mark.parametrize("platform", ["gpu", "tpu", "cpu"])
def test_a_chosen_precision_is_kept_on_every_platform(chosen, platform):
    assert resolve_precision(chosen, platform) == chosen


def test_accumulation_and_clipping_flags_are_documented_with_their_defaults():
    from jaxpref import cli

    text = " ".join(cli.train_parser().format_help().split())
    grad_accum = text.split(" --grad-accum GRAD_ACCUM ")[1].split(" --clip-norm ")[0]
    assert grad_accum.startswith("gradient accumulation: one optimizer update every N steps")
    assert grad_accum.endswith("(default: 1)")
    clip_norm = text.split(" --clip-norm CLIP_NORM ")[1].split(" --learning-rate ")[0]
    assert clip_norm.startswith("scale the gradient down to this global norm")
    assert clip_norm.endswith("(default: off)")
    cfg = cli.config_from_args(cli.train_parser().parse_args([]))
    assert (cfg.optim.grad_accum, cfg.optim.clip_norm) == (1, None)
    args = cli.train_parser().parse_args(["--grad-accum", "4", "--clip-norm", "1.5"])
    cfg = cli.config_from_args(args)
    assert (cfg.optim.grad_accum, cfg.optim.clip_norm, cfg.optim.global_batch) == (4, 1.5, 32)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--grad-accum", "0"], "--grad-accum 0: must be at least 1"),
        (["--grad-accum", "-2"], "--grad-accum -2: must be at least 1"),
        (["--clip-norm", "0"], "--clip-norm 0.0: must be above 0"),
        (["--clip-norm", "-1"], "--clip-norm -1.0: must be above 0"),
    ],
)
def test_accumulation_and_clipping_refuse_values_below_their_range(flags, message):
    from jaxpref import cli

    with pytest.raises(ConfigError) as error:
        cli.config_from_args(cli.train_parser().parse_args(flags))
    assert str(error.value) == message


def test_config_json_records_the_global_batch_and_reads_back(tmp_path):
    cfg = TrainConfig().replace(batch_size=4, grad_accum=3)
    cfg.to_json(tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["optim"]["batch_size"], saved["optim"]["global_batch"]) == (4, 12)
    assert TrainConfig.from_file(tmp_path / "config.json") == cfg
    saved["optim"]["global_batch"] = 16
    (tmp_path / "edited.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="global_batch 16 is not batch_size x grad_accum"):
        TrainConfig.from_file(tmp_path / "edited.json")
