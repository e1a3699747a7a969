"""recurrentkit.study.report: summaries, results.md in both layouts, conclusions, figures.

Every test renders hand-made run records (no training). The last tests check that the
committed reports in docs/study/ are what the renderer makes of the committed results.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from recurrentkit.analysis import ContextAccuracy, RunAnalysis, connectivity_decay
from recurrentkit.errors import ConfigError, InputTypeError
from recurrentkit.study.metrics import mean_ci
from recurrentkit.study.report import (
    SUMMARY_METRICS,
    StudyReport,
    compare_reach,
    difference_verdict,
    format_stat,
    summarize_runs,
    upgrade_results,
)


@dataclass(frozen=True)
class Info:
    """A ModelInfo, as the study script's ModelSpec provides one."""

    label: str
    layers: int
    embed: int = 8
    hidden: int = 16
    dropout: float = 0.0
    optimizer: str = "adam"
    lr: float = 1e-3
    epochs: int = 40
    original_params: int | None = None


MODELS = {
    "alpha": Info("GRU-α", 1, 64, 128, epochs=35, original_params=79_772),
    "beta": Info("GRU-β", 2, 96, 256, 0.1, lr=5e-4, epochs=40, original_params=675_996),
    "gru": Info("GRU", 2, 64, 110, epochs=8),
    "lstm": Info("LSTM", 2, 64, 94, epochs=8),
}
LAYERS = {"alpha": 1, "beta": 2, "gru": 2, "lstm": 2}


def analysis(far_mass: float = 0.5) -> dict[str, Any]:
    """A RunAnalysis.to_dict() of a hand-set 4×4 connectivity (lower triangle)."""
    conn = torch.tril(torch.ones(4, 4, dtype=torch.float64))
    conn[3, 0] = far_mass  # the only input 3 characters back
    ctx = ContextAccuracy(
        (1, 3),
        torch.arange(3),
        torch.tensor([[0.25, 0.5, 0.75], [0.5, 0.75, 1.0]], dtype=torch.float64),
        torch.tensor([4, 4, 4]),
        torch.tensor([0.5, 0.75], dtype=torch.float64),
    )
    a = RunAnalysis(
        connectivity_decay(conn, far=3), ctx, 1, 3, 0, "norm", 0, conn,
        ("<s>", "a", "n", "n"), ("a", "n", "n", "a"), 0.0,
    )  # fmt: skip
    return a.to_dict()


def record(model: str, routing: str, protocol: str = "seed", seed: int = 0, **values: Any):
    """A completed run record with every measured key (values override the defaults)."""
    r: dict[str, Any] = {
        "run": f"{model}-{routing}-{protocol}-s{seed}",
        "model": model,
        "routing": routing,
        "protocol": protocol,
        "seed": seed,
        "layers": LAYERS[model],
        "params": 1000 + 10 * LAYERS[model],
        "epochs": 2,
        "status": "completed",
        **dict.fromkeys(SUMMARY_METRICS, 0.0),
        "best_val_loss": 2.0,
        "final_val_loss": 2.0,
        "stepwise_val_loss": 2.0,
        "best_epoch": 2,
        "mean_length": 6.0,
        "novelty": 0.9,
        "far_share": 0.2,
        "top1_accuracy": 0.3,
        "top2_accuracy": 0.45,
        "top3_accuracy": 0.6,
        "history": [
            {"epoch": 1, "train_loss": 2.6, "val_loss": 2.4, "seconds": 0.1},
            {"epoch": 2, "train_loss": 2.1, "val_loss": 2.0, "seconds": 0.1},
        ],
        "examples": ["anna", "", "bob"],
    }
    r.update(values)
    return r


def results(runs: list[dict[str, Any]], preset: str = "quick", **extra: Any) -> dict[str, Any]:
    return {
        "command": "python examples/names_memory_ablation.py --preset quick",
        "preset": preset,
        "device": "cpu (x86_64)",
        "torch": "2.13.0",
        "threads": 1,
        "world_size": 1,
        "wall_seconds": 12.4,
        "data": {"source": "packaged names.txt", "train": 240, "val": 60},
        "num_samples": 1000,
        "original": {"alpha": {"epoch20_val_loss": 1.8177, "last_val_loss": 1.8371,
                               "last_epoch": 35}},
        "runs": runs,
        "summary": summarize_runs(runs),
        **extra,
    }  # fmt: skip


STUDY = StudyReport(MODELS, "a study preset")
BACKBONES = StudyReport(MODELS, "a backbones preset", compare="model")


# -- summaries -------------------------------------------------------------------------


def test_summaries_group_seeds_with_a_t_interval() -> None:
    runs = [record("beta", "shared", seed=s, runaway_rate=v) for s, v in [(0, 0.1), (1, 0.2)]]
    runs += [record("beta", "independent"), record("beta", "shared", seed=2, runaway_rate=0.6)]
    shared, independent = summarize_runs(runs)
    assert (shared["routing"], shared["n_seeds"], shared["seeds"]) == ("shared", 3, [0, 1, 2])
    mean, ci = mean_ci([0.1, 0.2, 0.6])
    assert shared["runaway_rate"] == {"mean": mean, "ci95": ci}
    assert independent["n_seeds"] == 1 and independent["runaway_rate"]["ci95"] is None
    assert set(SUMMARY_METRICS) <= set(shared)


def test_summaries_leave_out_unmeasured_runs_and_read_none_as_nan() -> None:
    diverged = {"run": "x", "model": "beta", "routing": "shared", "protocol": "seed",
                "seed": 0, "status": "diverged", "error": "loss is nan"}  # fmt: skip
    interrupted = record("beta", "shared", status="interrupted")
    unmeasured = {k: v for k, v in record("beta", "shared").items() if k != "runaway_rate"}
    assert summarize_runs([diverged, interrupted, unmeasured]) == []
    [entry] = summarize_runs([record("beta", "shared", far_share=None)])  # NaN in JSON
    assert math.isnan(entry["far_share"]["mean"])


def test_summaries_reject_what_is_not_a_list_of_records() -> None:
    with pytest.raises(InputTypeError, match="runs: expected a sequence"):
        summarize_runs({"runs": []})  # type: ignore[arg-type]
    with pytest.raises(InputTypeError, match=r"runs\[0\]"):
        summarize_runs(["beta"])  # type: ignore[list-item]
    incomplete = {k: v for k, v in record("beta", "shared").items() if k != "novelty"}
    with pytest.raises(ConfigError, match="novelty"):
        summarize_runs([incomplete])


def test_compare_reach_names_the_furthest_only_when_separated() -> None:
    clear = compare_reach({"a": 0.30, "b": 0.20, "c": 0.25}, far=3)
    assert clear.startswith("`a` reaches furthest back: 30.0%")
    assert clear.index("25.0% for `c`") < clear.index("20.0% for `b`")
    tie = compare_reach({"a": 0.300, "b": 0.295}, far=3)
    assert tie.startswith("No policy clearly reaches furthest back") and "1 point" in tie
    overlap = compare_reach({"a": (0.30, 0.05), "b": (0.27, 0.01)}, far=2, what="model")
    assert overlap.startswith("No model clearly") and "intervals overlap" in overlap
    apart = compare_reach({"a": (0.30, 0.01), "b": (0.27, 0.01)}, far=2)
    assert apart.startswith("`a` reaches furthest back: 30.0% ± 1.0")
    leak = compare_reach({"a": 0.3, "h": float("nan")}, far=3, future_shares={"a": 0.0, "h": 0.4})
    assert leak.startswith("`a`: 30.0%") and "`h` also puts 40.0%" in leak
    assert "`a` also" not in leak
    with pytest.raises(ConfigError, match="far_shares"):
        compare_reach({"a": float("nan")}, far=3)


@pytest.mark.parametrize(
    ("stat", "kwargs", "text"),
    [
        ({"mean": 1.92583, "ci95": None}, {"digits": 4}, "1.9258"),
        ({"mean": 1.92583, "ci95": 0.0123}, {}, "1.926 ± 0.012"),
        ({"mean": 0.2224, "ci95": None}, {"pct": True}, "22.2%"),
        ({"mean": 0.2224, "ci95": 0.0151}, {"pct": True}, "22.2% ± 1.5"),
    ],
)
def test_format_stat(stat: dict[str, Any], kwargs: dict[str, Any], text: str) -> None:
    assert format_stat(stat, **kwargs) == text


# -- configuration and bad input -------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"models": {}}, ConfigError, "models: expected at least one model"),
        ({"models": [Info("x", 1)]}, InputTypeError, "models: expected a mapping"),
        ({"compare": "cells"}, ConfigError, "compare: expected one of 'routing', 'model'"),
        ({"far": 0}, ConfigError, "far: expected an int >= 1"),
        ({"description": None}, InputTypeError, "description: expected a str"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        StudyReport(**{"models": MODELS, **kwargs})


def test_bad_results_are_refused() -> None:
    with pytest.raises(ConfigError, match="model: expected one of 'alpha'"):
        STUDY.markdown(results([record("beta", "shared") | {"model": "delta"}]))
    broken = results([record("beta", "shared")])
    del broken["num_samples"]
    with pytest.raises(ConfigError, match="results: expected a record with the keys num_samples"):
        STUDY.markdown(broken)
    with pytest.raises(InputTypeError, match="results"):
        STUDY.markdown([])  # type: ignore[arg-type]


# -- the study's layout ----------------------------------------------------------------


def study_runs() -> list[dict[str, Any]]:
    runs = [record("alpha", "independent", p) for p in ("seed", "fixed")]
    for p in ("seed", "fixed"):
        runs += [
            record("beta", "independent", p, runaway_rate=0.01, pad_sampled=12.0 * (p == "seed")),
            record("beta", "shared", p, runaway_rate=0.03, first_letter_tv=0.5),
            record("beta", "handoff", p, runaway_rate=0.7, leak_gap=0.8, pad_grad_norm=3e-4,
                   stepwise_val_loss=2.8),
        ]  # fmt: skip
    return runs


def test_a_plan_replaced_on_the_command_line_is_not_called_the_preset() -> None:
    """``--models gamma`` under the default preset: the header names the flags that
    replaced the preset's plan instead of describing the preset's runs."""
    command = "python examples/names_memory_ablation.py --models=gamma --routing handoff"
    md = STUDY.markdown(results(study_runs(), command=command))
    assert "Preset: `quick` — a study preset." not in md
    assert (
        "Preset: `quick`, its plan replaced by the command's `--models`, `--routing`: "
        "the runs are those below.  \n" in md
    )


def test_runs_of_another_length_are_not_pooled_as_seeds() -> None:
    """A merged study with a 2-epoch and a 5-epoch run of one policy: two groups, the
    second named by its length, not one group of two seeds."""
    runs = [
        record("beta", "handoff", seed=0, runaway_rate=0.1),
        record("beta", "handoff", seed=1, split_seed=1, epochs=5, runaway_rate=0.3),
    ]
    entries = summarize_runs(runs)
    assert [(e["n_seeds"], e["epochs"], e.get("variant")) for e in entries] == [
        (1, 2, None),
        (1, 5, "5 epochs"),
    ]


def test_sampling_variants_are_named_in_the_conclusion() -> None:
    """Runs re-measured with other sampling settings (``variant``) get their own line in
    the conclusion, named; the PAD gradient of their shared model is quoted once."""
    runs = [
        record("beta", "independent"),
        record("beta", "handoff", pad_grad_norm=3e-4, runaway_rate=0.0),
        record("beta", "handoff", pad_grad_norm=3e-4, runaway_rate=0.25, variant="train mode"),
    ]
    md = STUDY.markdown(results(runs))
    conclusion = md[md.index("## Conclusion") :]
    assert "- **GRU-β `handoff` (seed protocol, 2 epochs)**" in conclusion
    assert "- **GRU-β `handoff` [train mode] (seed protocol, 2 epochs)**" in conclusion
    assert conclusion.count("GRU-β seed: 3.00e-04") == 1


def test_the_study_layout_states_the_original_reference_and_the_pad_protocol() -> None:
    md = STUDY.markdown(results(study_runs()))
    assert md.startswith("# Shared vs layer-wise memory in stacked GRUs — measured\n")
    assert "Preset: `quick` — a study preset.  \n" in md
    assert "| epochs run | params (measured) | params (original) |" in md
    assert "| GRU-β | 2 | 96 | 256 | 0.1 | adam | 0.0005 | 2 (original 40) | 1,020 | 675,996 |" in (
        md
    )
    assert md.index("## Results, `seed` protocol") < md.index("## Results, `fixed` protocol")
    assert "| GRU-α | independent (1 layer: every policy is this model) | 1 |" in md
    assert "| GRU-β | handoff | seed | 3.00e-04 | 0.000 | 0.000 | 0.0 |" in md  # PAD table
    assert "| GRU-β | handoff | fixed | 1 | 20.0% | 0.0% | 30.0% | 45.0% | 60.0% |" in md
    assert "## The original's figures" in md and "GRU-α 1.8177 at epoch 20" in md
    assert md.endswith("The schema of `results.json` is described in the script's docstring.\n")


def test_the_study_conclusions_follow_the_numbers() -> None:
    lines = STUDY.conclusions(summarize_runs(study_runs()), num_samples=1000)
    text = "\n".join(lines)
    assert lines[0].startswith("Every figure comes from **one seed**")
    assert "- **GRU-β `handoff` (seed protocol, 2 epochs)**: step-wise validation loss exceeds " \
           "teacher-forced by +0.800 nats" in text  # fmt: skip
    assert "**GRU-α `independent` (" not in text  # one layer: no policy line
    assert "vs independent: runaway +2.0 points" in text
    assert "reproduced by: GRU-β `handoff` (seed, 70%), GRU-β `handoff` (fixed, 70%)." in text
    assert "causal shared memory does not support the claim" in text
    assert "samples drawing `<PAD>`: 12.0 vs 0.0 of each 1,000" in text
    assert "- **PAD flaw**: in 6 of 6 causal groups" in text
    assert "Under `handoff` it is not zero (GRU-β seed: 3.00e-04, GRU-β fixed: 3.00e-04)" in text
    assert "**Memory reach**, GRU-β, seed protocol: No policy clearly reaches" in text
    assert "**Backbones**" not in text


@pytest.mark.parametrize(
    ("shared_runaway", "verdict"),
    [(0.26, "supports"), (0.11, "weakly supports"), (0.05, "does not support")],
)
def test_the_shared_memory_verdict_uses_its_stated_thresholds(
    shared_runaway: float, verdict: str
) -> None:
    runs = [record("beta", "independent", runaway_rate=0.01),
            record("beta", "shared", runaway_rate=shared_runaway)]  # fmt: skip
    text = "\n".join(STUDY.conclusions(summarize_runs(runs), num_samples=100))
    assert f"causal shared memory {verdict} the claim" in text


def test_several_seeds_drop_the_one_seed_caveat_and_show_intervals() -> None:
    runs = [record("beta", r, seed=s, best_val_loss=2.0 + s / 10)
            for r in ("independent", "shared") for s in (0, 1, 2)]  # fmt: skip
    report = results(runs)
    assert "one seed" not in STUDY.conclusions(report["summary"], 1000)[0]
    md = STUDY.markdown(report)
    mean, ci = mean_ci([2.0, 2.1, 2.2])
    assert f"| GRU-β | shared | 3 | {mean:.4f} ± {ci:.4f} (2) |" in md


# -- the comparison (backbones) layout -------------------------------------------------


def backbone_runs() -> list[dict[str, Any]]:
    return [
        record("gru", "independent", "fixed", params=136_415, stepwise_val_loss=1.966,
               far_share=0.21, top1_accuracy=0.381, analysis=analysis(0.5)),
        record("lstm", "independent", "fixed", params=136_211, stepwise_val_loss=1.999,
               far_share=0.25, top1_accuracy=0.372, analysis=analysis(2.0)),
    ]  # fmt: skip


def test_the_backbones_layout_has_its_own_table_and_no_original_reference() -> None:
    report = results(backbone_runs(), preset="backbones", memory_plots=["decay_x.png"])
    md = BACKBONES.markdown(report)
    assert md.startswith("# Recurrent backbones at matched size on the names — measured\n")
    for absent in ("original", "PAD", "never-ending", "held-out", "| routing |"):
        assert absent not in md, absent
    header = "| model | layers | embedding | hidden | dropout | optimizer | lr | epochs | params |"
    assert header in md
    assert "| GRU | 2 | 64 | 110 | 0.0 | adam | 0.001 | 2 | 136,415 |" in md
    assert "## Results, independent routing, fixed protocol" in md
    assert ("| GRU | 136,415 | 1 | 2.0000 (2) | 2.0000 | 1.9660 | 21.0% | 38.1% | 45.0% | 60.0% "
            "| 0.0% | 6.00 | 90.0% |") in md  # fmt: skip
    assert "| far share (d ≥ 3) | future share |" not in md  # no second table of the same
    assert "![decay_x.png](decay_x.png)" in md


def test_the_header_describes_the_preset_as_the_file_records_it() -> None:
    """A results file's own ``description`` first; a file that records none gets the
    preset's description of its time (``unrecorded_description``), else the current one."""
    runs = backbone_runs()
    then = StudyReport(MODELS, "eleven cells", compare="model", unrecorded_description="three")
    line = "Preset: `backbones` — {}.  \n"
    assert line.format("three") in then.markdown(results(runs, preset="backbones"))
    recorded = results(runs, preset="backbones", description="as run")
    assert line.format("as run") in then.markdown(recorded)
    assert line.format("a backbones preset") in BACKBONES.markdown(
        results(runs, preset="backbones")
    )
    with pytest.raises(InputTypeError, match="unrecorded_description"):
        StudyReport(MODELS, "x", unrecorded_description=3)  # type: ignore[arg-type]


def test_the_backbones_conclusions_name_reach_and_loss() -> None:
    runs = backbone_runs()
    lines = BACKBONES.conclusions(summarize_runs(runs), num_samples=1000)
    text = "\n".join(lines)
    assert "**Memory reach**, independent routing, fixed protocol: `LSTM` reaches furthest" in text
    assert "lowest step-wise validation loss: `GRU`" in text
    assert "`GRU` 136,415, `LSTM` 136,211 parameters" in text
    assert "PAD" not in text and "never-ending" not in text and "`independent` (" not in text


def test_the_memory_tables_come_from_the_recorded_analyses() -> None:
    md = BACKBONES.markdown(results(backbone_runs(), preset="backbones"))
    assert "| run | d = 0 | d = 1 |" in md
    assert "| gru-independent-fixed-s0 | " in md and "| lstm-independent-fixed-s0 | " in md
    assert "| run | 0 | 1 | 2 |" in md and "25.0% | 50.0% | 75.0%" in md


def test_a_report_renders_the_same_from_saved_json() -> None:
    for report, runs in ((STUDY, study_runs()), (BACKBONES, backbone_runs())):
        data = results(runs)
        again = json.loads(json.dumps(data))
        assert report.markdown(again) == report.markdown(data)


def test_write_markdown_writes_the_text(tmp_path: Path) -> None:
    data = results(study_runs())
    STUDY.write_markdown(tmp_path / "results.md", data)
    assert (tmp_path / "results.md").read_text(encoding="utf-8") == STUDY.markdown(data)


def test_comparison_groups_follow_the_layout() -> None:
    runs = study_runs()
    by_policy = STUDY.comparison_groups(runs)
    assert list(by_policy) == [
        ("alpha_seed", "GRU-α, seed protocol"), ("alpha_fixed", "GRU-α, fixed protocol"),
        ("beta_seed", "GRU-β, seed protocol"), ("beta_fixed", "GRU-β, fixed protocol"),
    ]  # fmt: skip
    assert list(by_policy["beta_seed", "GRU-β, seed protocol"]) == [
        "independent", "shared", "handoff",
    ]  # fmt: skip
    by_model = BACKBONES.comparison_groups(backbone_runs())
    assert {k: list(v) for k, v in by_model.items()} == {
        ("independent_fixed", "independent routing, fixed protocol"): ["GRU", "LSTM"]
    }


# -- figures ---------------------------------------------------------------------------


def test_loss_and_memory_figures(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    runs = backbone_runs() + [{"run": "gru-x", "model": "gru", "routing": "independent",
                               "protocol": "seed", "seed": 0, "status": "diverged"}]  # fmt: skip
    assert BACKBONES.plot_losses(tmp_path, runs) == ["loss_gru_fixed.png", "loss_lstm_fixed.png"]
    assert BACKBONES.plot_memory(tmp_path, runs) == [
        "connectivity_independent_fixed.png",
        "decay_independent_fixed.png",
        "context_independent_fixed.png",
    ]
    for png in tmp_path.iterdir():
        assert png.read_bytes()[:4] == b"\x89PNG", png.name
    assert STUDY.plot_memory(tmp_path, [record("beta", "shared")]) == []  # nothing analysed


def test_matplotlib_is_imported_only_to_draw() -> None:
    code = "import sys, recurrentkit.study.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- round 2: paired intervals, verdicts that read them, old results, snapshots ----------


def test_paired_differences_pair_runs_by_seed() -> None:
    runs = [
        record("beta", "independent", seed=s, best_val_loss=v)
        for s, v in [(0, 1.7386), (1, 1.7385), (2, 1.7349)]
    ]
    runs += [record("beta", "shared", seed=s, best_val_loss=v)
             for s, v in [(2, 1.7328), (0, 1.7306), (1, 1.7328)]]  # fmt: skip
    shared = next(e for e in summarize_runs(runs) if e["routing"] == "shared")
    d = shared["vs_independent"]["best_val_loss"]
    mean, ci = mean_ci([1.7306 - 1.7386, 1.7328 - 1.7385, 1.7328 - 1.7349])
    assert d == {"mean": pytest.approx(mean), "ci95": pytest.approx(ci), "n": 3}
    assert difference_verdict(d) == "no measurable difference"  # -0.005 ± 0.007
    assert "vs_independent" not in summarize_runs(runs)[0]  # independent itself


def test_a_verdict_whose_interval_contains_0_is_no_measurable_difference() -> None:
    runs = [record("beta", "independent", seed=s, runaway_rate=0.0) for s in (0, 1, 2)]
    runs += [record("beta", "shared", seed=s, runaway_rate=v)
             for s, v in [(0, 0.30), (1, 0.0), (2, 0.0)]]  # fmt: skip
    text = "\n".join(STUDY.conclusions(summarize_runs(runs), num_samples=1000))
    # 10 points on average would "weakly support" the claim, but the interval contains 0.
    assert "no measurable difference in runaway rate from independent" in text
    assert "weakly supports" not in text
    md = STUDY.markdown(results(runs))
    assert "| GRU-β | shared | 3 |" in md and "(no measurable difference)" in md
    # A separated interval keeps the thresholds' verdict, and says so.
    runs = [record("beta", "independent", seed=s, runaway_rate=0.0) for s in (0, 1)]
    runs += [record("beta", "shared", seed=s, runaway_rate=v) for s, v in [(0, 0.3), (1, 0.31)]]
    text = "\n".join(STUDY.conclusions(summarize_runs(runs), num_samples=1000))
    assert "causal shared memory supports the claim" in text and "paired difference" in text


def test_runaway_rates_carry_their_pooled_upper_bound() -> None:
    runs = [record("beta", "shared", seed=s, runaways=0, samples=1000) for s in (0, 1, 2)]
    [entry] = summarize_runs(runs)
    assert entry["runaway_pooled"]["upper95"] == pytest.approx(1 - 0.05 ** (1 / 3000))
    md = STUDY.markdown(results(runs))
    assert "| 0 of 3,000 (≤ 0.10%) |" in md  # not "0.0% ± 0.0"


def test_old_results_are_read_as_the_new_schema() -> None:
    old = results([record("beta", "shared", stepwise_val_loss=1.9),
                   record("alpha", "independent", "fixed", stepwise_val_loss=2.05)],
                  schema="names_memory_ablation/1")  # fmt: skip
    new = upgrade_results(old)
    seed_run, fixed_run = new["runs"]
    assert seed_run["stepwise_val_loss_zero"] == 1.9 and seed_run["stepwise_val_loss"] is None
    assert fixed_run["stepwise_val_loss"] == fixed_run["stepwise_val_loss_zero"] == 2.05
    assert seed_run["runaways"] == 0 and seed_run["runaway_upper95"] == pytest.approx(
        0.002991, 1e-3
    )
    assert old["runs"][0]["stepwise_val_loss"] == 1.9  # the input is not changed
    assert upgrade_results(new) == new
    assert "| 1.9000 |" in STUDY.markdown(old)  # the from-zero column


def test_the_checkpoint_section_lists_best_and_saved_epochs() -> None:
    snap = {"runaway_rate": 0.18, "runaway_upper95": 0.2, "mean_length": 12.5, "loop_rate": 0.1,
            "first_letter_tv": 0.3, "first_letters": {"a": 0.5, "l": 0.3, "m": 0.2}}  # fmt: skip
    r = record("beta", "handoff", saved_epochs=[{"epoch": 1, "val_loss": 2.4, **snap}],
               best_checkpoint={"epoch": 2, "val_loss": 2.0, **snap})  # fmt: skip
    md = STUDY.markdown(results([r]))
    assert "## Samples by checkpoint" in md
    assert "| beta-handoff-seed-s0 | 1 | 2.4000 | 18.0% (≤ 20.0%) | 12.50 | 10.0% | 0.300 " \
           "| a 50%, l 30%, m 20% |" in md  # fmt: skip
    assert "| beta-handoff-seed-s0 | 2 ★ | 2.0000 |" in md
    assert "## Samples by checkpoint" not in STUDY.markdown(results([record("beta", "shared")]))


def test_a_mix_of_seed_counts_names_the_one_seed_groups() -> None:
    runs = [record("beta", r, seed=s) for r in ("independent", "shared") for s in (0, 1)]
    runs.append(record("beta", "handoff"))
    first = STUDY.conclusions(summarize_runs(runs), 1000)[0]
    assert first.startswith("Some groups come from **one seed** (GRU-β `handoff`)")
