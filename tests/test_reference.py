"""Behaviour pinned across refactorings: the seeded reference run predicts as at a101e1b."""

import numpy as np
import pandas as pd
import pytest
from conftest import script_environment
from reference_run import reference_run

FIXTURE = "fixtures/reference_valid_predictions.csv"


@pytest.mark.slow
def test_reference_run_predicts_as_recorded(tiny_preset, tmp_path, request):
    recorded = pd.read_csv(request.path.parent / FIXTURE, dtype={"id": str})
    produced = pd.read_csv(
        reference_run(tmp_path, tiny_preset, script_environment()), dtype={"id": str}
    )
    assert produced["id"].tolist() == recorded["id"].tolist()
    difference = np.abs(produced.iloc[:, 1:].to_numpy() - recorded.iloc[:, 1:].to_numpy())
    assert difference.max() <= 1e-6
