"""analyse_run() and its companions: a tiny model analysed, JSON round trips, tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from recurrentkit.analysis import (
    ConnectivityDecay,
    ContextAccuracy,
    RunAnalysis,
    analyse_run,
    analysis_tables,
    connectivity,
    connectivity_decay,
    context_accuracy,
    fixed_subset,
    plot_comparison,
)
from recurrentkit.errors import ConfigError, InputTypeError, ShapeError
from recurrentkit.study import data

NAMES = ["anna", "bob", "christopher", "emma", "alexandra", "li", "olivia", "sam", "isabella"]


def encoded(protocol: str) -> tuple[torch.Tensor, torch.Tensor]:
    return data.encode(NAMES, protocol, 12)


def test_fixed_subset_is_seeded_sorted_and_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b = fixed_subset(100, 10, seed=3), fixed_subset(100, 10, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b) and a.tolist() == sorted(set(a.tolist())) and len(a) == 10
    assert not torch.equal(a, fixed_subset(100, 10, seed=4))
    assert fixed_subset(5, 10).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match="size"):
        fixed_subset(5, 0)


def test_a_causal_model_analysed_on_a_subset(lm) -> None:
    model = lm("independent", V=29).train()  # analysed in eval mode, mode restored
    x, y = encoded("fixed")
    a = analyse_run(model, x, y, names=5, seed=1, far=2, vocab=data.itos)
    assert model.training
    rows = fixed_subset(len(NAMES), 5, seed=1)
    conn = connectivity(model.eval(), x[rows], targets=y[rows])
    expected = connectivity_decay(conn, far=2)
    torch.testing.assert_close(a.decay.curve, expected.curve, equal_nan=True)
    assert a.decay.far_share == pytest.approx(expected.far_share)
    assert a.decay.future_share == 0.0  # causal: nothing above the diagonal
    assert (a.names, a.context_names, a.subset_seed) == (5, len(NAMES), 1)
    # accuracy by context covers every row, not only the subset
    ctx = context_accuracy(model, x, y)
    assert torch.equal(a.context.counts, ctx.counts)
    torch.testing.assert_close(a.context.accuracy, ctx.accuracy, equal_nan=True)
    summary = a.summary()
    assert summary["top1_accuracy"] == pytest.approx(float(ctx.overall[0]))
    assert summary["far_share"] == a.decay.far_share


def test_a_smaller_batch_bounds_memory_and_measures_the_same(lm) -> None:
    """``batch_size`` only splits the rows into passes: the same connectivity."""
    model, (x, y) = lm("independent", V=29), encoded("seed")
    whole = analyse_run(model, x, y, names=5, seed=1, far=2, first_position=1)
    split = analyse_run(model, x, y, names=5, seed=1, far=2, first_position=1, batch_size=2)
    torch.testing.assert_close(
        split.decay.curve, whole.decay.curve, rtol=1e-6, atol=1e-9, equal_nan=True
    )  # NaN: distances no output reaches
    assert split.decay.far_share == pytest.approx(whole.decay.far_share, rel=1e-6)


def test_the_example_is_one_name_cropped_to_its_targets(lm) -> None:
    model = lm("independent", V=29)
    for protocol, first in (("seed", 1), ("fixed", 0)):
        x, y = encoded(protocol)
        a = analyse_run(model, x, y, names=len(NAMES), first_position=first, vocab=data.itos)
        # the first name of 6+ characters under either protocol: "christopher"
        assert a.example_index == 2
        L = len("christopher") + (protocol == "fixed")
        assert a.example.shape == (L, L)
        expected = "hristopher." if protocol == "seed" else "christopher."
        assert "".join(a.example_outputs) == expected
        assert a.example_inputs[0] == ("c" if protocol == "seed" else "<S>")
        full = connectivity(model, x[2], targets=y[2])
        torch.testing.assert_close(a.example, full[:L, :L].double())
    given = analyse_run(model, *encoded("fixed"), example=5)
    assert given.example_index == 5 and given.example_inputs == ("28", "13", "10")


def test_handoff_leaks_the_future_under_teacher_forcing(lm) -> None:
    x, y = encoded("seed")
    a = analyse_run(lm("handoff", V=29), x, y, first_position=1)
    assert a.decay.future_share > 0.01
    assert bool((a.example.triu(1) > 0).any())


def test_json_round_trip(lm) -> None:
    x, y = encoded("seed")
    a = analyse_run(lm("independent", V=29), x, y, names=4, first_position=1)
    assert math.isnan(float(a.context.at(1)[0]))  # position 0 never scored under seed
    text = json.dumps(a.to_dict(), allow_nan=False)
    b = RunAnalysis.from_dict(json.loads(text))
    assert b.to_dict() == json.loads(text)
    torch.testing.assert_close(b.decay.curve, a.decay.curve, equal_nan=True)
    torch.testing.assert_close(b.context.accuracy, a.context.accuracy, equal_nan=True)
    assert ConnectivityDecay.from_dict(a.decay.to_dict()).far_share == a.decay.far_share
    assert ContextAccuracy.from_dict(a.context.to_dict()).k == (1, 2, 3)
    with pytest.raises(ConfigError, match="RunAnalysis.to_dict"):
        RunAnalysis.from_dict({"decay": {}})
    with pytest.raises(ConfigError, match="ContextAccuracy.to_dict"):
        ContextAccuracy.from_dict({"positions": [0], "counts": [1]})


def test_bad_input(lm) -> None:
    model = lm("independent", V=29)
    x, y = encoded("fixed")
    with pytest.raises(InputTypeError, match="model"):
        analyse_run("model", x, y)  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match="y"):
        analyse_run(model, x, y[:, :-1])
    with pytest.raises(ShapeError, match="example"):
        analyse_run(model, x, y, example=len(NAMES))
    empty = y.clone()
    empty[3] = -100
    with pytest.raises(ConfigError, match="example"):
        analyse_run(model, x, empty, example=3)
    with pytest.raises(ConfigError, match="names"):
        analyse_run(model, x, y, names=0)
    with pytest.raises(ConfigError, match="reduce"):
        analyse_run(model, x, y, reduce="max")


def test_tables_and_figures(lm, tmp_path: Path) -> None:
    x, y = encoded("fixed")
    runs = {r: analyse_run(lm(r, V=29), x, y, names=4) for r in ("independent", "handoff")}
    text = analysis_tables(runs, max_distance=3, max_position=2, label="policy")
    lines = text.splitlines()
    assert lines[0] == "| policy | d = 0 | d = 1 | d = 2 | d = 3 |"
    assert lines[2].startswith("| independent | ") and lines[5] == "| policy | 0 | 1 | 2 |"
    curve = runs["handoff"].decay.curve
    assert lines[3] == "| handoff | " + " | ".join(f"{float(v):.3f}" for v in curve[:4]) + " |"
    files = plot_comparison(runs, tmp_path / "figs", "tiny_fixed", title="tiny")
    assert files == [
        "connectivity_tiny_fixed.png",
        "decay_tiny_fixed.png",
        "context_tiny_fixed.png",
    ]
    for f in files:
        assert (tmp_path / "figs" / f).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InputTypeError, match="RunAnalysis"):
        plot_comparison({"x": 1}, tmp_path, "bad")  # type: ignore[dict-item]


def test_many_runs_wrap_their_heatmaps_into_rows(lm, tmp_path: Path) -> None:
    """Five runs: four heatmaps a row, then one; beyond six the decay figure widens for the
    legend beside its axes."""
    from matplotlib.image import imread

    x, y = encoded("fixed")
    one = analyse_run(lm("independent", V=29), x, y, names=4)
    sizes = {}
    for n in (2, 4, 5, 7):
        plot_comparison({f"run {i}": one for i in range(n)}, tmp_path, f"n{n}")
        sizes[n] = {k: imread(tmp_path / f"{k}_n{n}.png").shape[:2]
                    for k in ("connectivity", "decay")}  # fmt: skip
    (h2, w2), (h4, w4), (h5, w5) = (sizes[n]["connectivity"] for n in (2, 4, 5))
    assert h2 == h4 and w4 == w5 and w4 > 1.9 * w2  # one row, up to four columns
    assert h5 > 1.9 * h4 - 50  # a second row
    assert sizes[5]["decay"][1] == sizes[4]["decay"][1]  # legend inside up to 6 runs
    assert sizes[7]["decay"][1] > 1.3 * sizes[5]["decay"][1]
