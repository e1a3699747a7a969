"""examples/streaming_names.py: a stream of names with resets computes the per-name model."""

from __future__ import annotations

import pytest
import streaming_names as example
import torch


@pytest.fixture(autouse=True)
def threads_restored() -> object:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("cell", "dtype", "tol"), [("gru", "float64", 1e-12), ("lstm", "float32", 1e-5)]
)
def test_the_stream_with_resets_equals_the_per_name_model(
    cell: str, dtype: str, tol: float
) -> None:
    settings = example.Settings(
        cell=cell, names=200, epochs=3, batch_size=32, row_len=48, dtype=dtype
    )
    before, training, after = example.run(settings)
    for c in (before, after):
        assert abs(c.per_name - c.stream) <= tol
        assert c.rows_stream < c.rows_per_name  # fewer rows: several names in each
    assert len(training.per_name) == len(training.stream) == 15  # 160 names in 5 batches, 3 epochs
    assert training.max_gap <= tol
    assert abs(training.val_per_name - training.val_stream) <= tol
    assert training.per_name[-1] < training.per_name[0] - 0.05  # it did train
    # without resets a trained model's names read the one before: another loss
    assert abs(after.stream_no_resets - after.per_name) > 1e-2


def test_the_command_line_prints_both_losses(capsys: pytest.CaptureFixture[str]) -> None:
    assert example.main(["--quick", "--cell", "gru", "--row-len", "32"]) == 0
    out = capsys.readouterr().out
    for needle in ("per-name rows", "stream rows with resets", "largest |difference|"):
        assert needle in out
    with pytest.raises(SystemExit) as exit_:
        example.main(["--row-len", "8"])
    assert exit_.value.code == 2
    assert "--row-len" in capsys.readouterr().err
