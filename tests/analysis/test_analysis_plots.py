"""Plots: files are written, colours are normalised per output position, bad labels refused."""

from __future__ import annotations

import pytest
import torch

import recurrentkit as rk
from recurrentkit.analysis import (
    connectivity,
    connectivity_decay,
    context_accuracy,
    plot_connectivity,
    plot_context_accuracy,
    plot_decay,
)

pytest.importorskip("matplotlib")


def test_heatmap_over_a_name(tmp_path, lm) -> None:
    conn = connectivity(lm("independent", V=6), torch.tensor([0, 2, 3, 4, 1]))
    path = tmp_path / "figs" / "heatmap.png"
    fig = plot_connectivity(conn, ["<s>", "a", "b", "c", "."], path=path, title="independent")
    assert path.stat().st_size > 1000
    shade = fig.axes[0].images[0].get_array()
    assert shade.shape == (5, 5)
    assert shade.max(axis=1).tolist() == [1.0] * 5  # each output position's max is full colour
    torch.testing.assert_close(
        torch.as_tensor(shade.data), (conn / conn.max(dim=1, keepdim=True).values).double()
    )
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["<s>", "a", "b", "c", "."]


def test_heatmap_over_a_text_with_zero_rows(tmp_path) -> None:
    text = "the cat sat"
    conn = torch.rand(len(text), len(text)).tril()
    conn[2] = 0
    fig = plot_connectivity(conn, text, outputs=text[1:] + ".", path=tmp_path / "text.svg")
    assert (tmp_path / "text.svg").read_text().startswith("<?xml")
    assert fig.axes[0].images[0].get_array()[2].max() == 0.0


def test_heatmap_into_given_axes() -> None:
    from matplotlib.figure import Figure

    fig = Figure()
    ax1, ax2 = fig.subplots(1, 2)
    assert plot_connectivity(torch.eye(3), "abc", ax=ax2) is fig
    assert len(ax2.images) == 1 and len(ax1.images) == 0


def test_decay_and_context_plots(tmp_path, lm) -> None:
    x = torch.randint(0, 6, (3, 6), generator=torch.Generator().manual_seed(0))
    decays = {r: connectivity_decay(connectivity(lm(r), x)) for r in ("independent", "handoff")}
    fig = plot_decay(decays, path=tmp_path / "decay.png", max_distance=4, log_scale=True)
    assert (tmp_path / "decay.png").stat().st_size > 1000
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2 and len(lines[0].get_xdata()) == 5
    assert lines[0].get_label().startswith("independent (far share ")
    assert "future" not in lines[0].get_label() and ", future share " in lines[1].get_label()
    accs = {r: context_accuracy(lm(r), x, x.roll(-1, dims=1)) for r in ("independent", "shared")}
    fig = plot_context_accuracy(accs, k=2, path=tmp_path / "acc.png")
    assert (tmp_path / "acc.png").stat().st_size > 1000 and len(fig.axes[0].get_lines()) == 2


def test_bad_input() -> None:
    with pytest.raises(rk.ShapeError, match="inputs"):
        plot_connectivity(torch.eye(3), "ab")
    with pytest.raises(rk.ShapeError, match="outputs"):
        plot_connectivity(torch.eye(3), "abc", outputs=["a"])
    with pytest.raises(rk.ShapeError, match="conn"):
        plot_connectivity(torch.zeros(2, 3, 3), "abc")
    with pytest.raises(rk.InputTypeError, match="inputs"):
        plot_connectivity(torch.eye(3), [1, 2, 3])  # type: ignore[list-item]
    with pytest.raises(rk.ConfigError, match="decays"):
        plot_decay({})
    with pytest.raises(rk.InputTypeError, match="decays"):
        plot_decay({"a": torch.eye(2)})
    with pytest.raises(rk.ConfigError, match="results"):
        plot_context_accuracy({})


def test_many_curves_stay_distinct_and_their_legend_hides_none() -> None:
    """Beyond the ten default colours the curves change line style, and beyond
    ``LEGEND_INSIDE`` curves the legend sits outside the axes."""
    from recurrentkit.analysis import plots

    curves = {f"m{i}": torch.linspace(1.0, 0.0, 5) * (i + 1) for i in range(12)}
    ax = plot_decay(curves).axes[0]
    styles = [(line.get_color(), line.get_linestyle()) for line in ax.get_lines()]
    assert len(set(styles)) == 12
    anchor = ax.get_legend().get_bbox_to_anchor().transformed(ax.transAxes.inverted())
    assert anchor.x0 > 1.0  # right of the axes
    few = plot_decay(dict(list(curves.items())[: plots.LEGEND_INSIDE])).axes[0]
    assert few.get_legend().get_bbox_to_anchor().transformed(few.transAxes.inverted()).x0 < 1
