"""Settings resolved from the devices: the precision `auto` stands for."""

import pytest

from jaxpref.config import PRECISIONS, resolve_precision


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
