"""The independent reference forward passes (tests/helpers/reference_models.py) against closed forms."""
from __future__ import annotations

import math

import torch

from reference_models import ref_dtr_table, ref_timestep_embedding


def test_reference_timestep_embedding_closed_form():
    t = torch.tensor([0.0, 3.0])
    emb = ref_timestep_embedding(t, 8)
    expected = torch.tensor([[math.cos(3.0 * 10000 ** (-i / 4)) for i in range(4)] + [math.sin(3.0 * 10000 ** (-i / 4)) for i in range(4)]])
    torch.testing.assert_close(emb[1:], expected.double())
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4, dtype=torch.float64))


def test_reference_dtr_table_rows_are_windows():
    table = ref_dtr_table(10, 20, 2.0, 0.5)
    assert torch.all(table.sum(1) == 10)
    assert table[0, :10].all() and table[-1, 10:].all()
