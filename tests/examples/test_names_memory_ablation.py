"""examples/names_memory_ablation.py: parameter counts, a tiny preset end to end, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import names_memory_ablation as study
import pytest
import torch

from recurrentkit.study.lm import count_parameters
from recurrentkit.study.metrics import paired_difference
from recurrentkit.study.report import summarize_runs

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "names_memory_ablation.py"
REQUIRED = {
    "model", "routing", "seed", "params", "best_val_loss", "stepwise_val_loss", "runaway_rate",
    "distinct2", "distinct3", "repetition", "novelty", "mean_length",
}  # fmt: skip
ANALYSIS = {"far_share", "future_share", "top1_accuracy", "top2_accuracy", "top3_accuracy"}


@pytest.mark.parametrize(
    ("model", "expected"), [("alpha", 79_772), ("beta", 675_996), ("gamma", 4_155_420)]
)
def test_the_original_parameter_counts(model: str, expected: int) -> None:
    for routing in ("independent", "shared", "handoff", "residual"):
        built = study.build_model(study.SPECS[model], routing, "seed")
        assert count_parameters(built) == expected
    # The fixed protocol adds one embedding row and one head output: E + H + 1.
    spec = study.SPECS[model]
    fixed = study.build_model(spec, "independent", "fixed")
    assert count_parameters(fixed) == expected + spec.embed + spec.hidden + 1


def test_dry_run_prints_one_json_line_per_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert study.main(["--preset", "seed", "--dry-run", "--models", "alpha,beta"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["model"], d["routing"], d["params"]) for d in lines] == [
        ("alpha", "independent", 79_772),  # one layer: every policy is the same model
        ("beta", "independent", 675_996),
        ("beta", "shared", 675_996),
        ("beta", "handoff", 675_996),
    ]


BACKBONE_CELLS = {
    "gru": "GRUCell", "lstm": "LSTMCell", "nlstm": "NestedLSTMCell", "mgu": "MGUCell",
    "cifg": "CoupledLSTMCell", "indrnn": "IndRNNCell", "ln_gru": "LayerNormGRUCell",
    "ln_lstm": "LayerNormLSTMCell", "min_gru": "MinGRUCell", "min_lstm": "MinLSTMCell",
    "lru": "LRUCell",
}  # fmt: skip


def test_backbones_have_matched_parameter_counts(capsys: pytest.CaptureFixture[str]) -> None:
    """Every library cell is a backbone, each within 1% of the GRU's parameter count as the
    study counts it (the built CharLM under the fixed protocol)."""
    assert study.main(["--preset", "backbones", "--dry-run"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["model"], d["routing"], d["protocol"]) for d in lines] == [
        (m, "independent", "fixed") for m in BACKBONE_CELLS
    ]
    counts = {d["model"]: d["params"] for d in lines}
    for m, name in BACKBONE_CELLS.items():
        model = study.build_model(study.SPECS[m], "independent", "fixed")
        assert count_parameters(model) == counts[m]
        assert abs(counts[m] / counts["gru"] - 1) <= 0.01, (m, counts)
        assert {type(c).__name__ for c in model.stack.cells} == {name}
        assert len(model.stack.cells) == 2 and study.SPECS[m].embed == 64
    assert study.SPECS["indrnn"].label == "IndRNN (relu)"
    indrnn = study.build_model(study.SPECS["indrnn"], "independent", "fixed")
    assert indrnn.stack.cells[0].nonlinearity == "relu"


def test_new_backbones_run_the_whole_pipeline(tmp_path: Path) -> None:
    """The linear recurrences (minGRU, minLSTM, the complex-state LRU) and a gated cell:
    trained, evaluated, sampled, analysed, reported and drawn, on a few names."""
    out = tmp_path / "out"
    models = ("mgu", "min_gru", "min_lstm", "lru")
    args = ["--preset", "backbones", "--models", ",".join(models), "--epochs", "1",
            "--max-names", "40", "--samples", "8", "--threads", "1", "--out", str(out),
            "--no-progress"]  # fmt: skip
    assert study.main(args) == 0
    results = json.loads((out / "results.json").read_text())
    runs = {r["model"]: r for r in results["runs"]}
    assert set(runs) == set(models)
    for r in runs.values():
        assert REQUIRED <= set(r) and r["status"] == "completed", r["model"]
        assert abs(r["leak_gap"]) < 1e-5 and r["future_share"] == 0.0  # causal
        assert 0.0 <= r["far_share"] <= 1.0 and 0.0 <= r["top1_accuracy"] <= 1.0
        assert len(r["analysis"]["decay"]["curve"]) > 3 and r["samples"] == 8
        assert (out / r["samples_file"]).is_file()
    assert results["description"] == study.PRESETS["backbones"].description
    md = (out / "results.md").read_text(encoding="utf-8")
    # --models replaced the preset's plan: the header says so instead of the description
    assert "Preset: `backbones`, its plan replaced by the command's `--models`" in md
    for m in models:
        assert f"| {study.SPECS[m].label} |" in md
    assert results["memory_plots"] == [f"{k}_independent_fixed.png"
                                       for k in ("connectivity", "decay", "context")]  # fmt: skip
    assert all((out / f).is_file() for f in results["memory_plots"] + results["plots"])


def test_plans_follow_presets_and_overrides() -> None:
    quick = study.plan_runs(study.PRESETS["quick"])
    assert [k.id for k in quick] == [
        "alpha-independent-seed-s0",
        "alpha-independent-fixed-s0",
        "beta-independent-seed-s0",
        "beta-shared-seed-s0",
        "beta-handoff-seed-s0",
    ]
    full = study.plan_runs(study.PRESETS["full"])
    assert len(full) == (1 * 2 + 5 * 2 + 5 * 2) * 3
    grid = study.plan_runs(study.PRESETS["seed"], routings=("shared",), seeds=(0, 1))
    assert {(k.model, k.routing, k.seed) for k in grid} == {
        (m, "shared", s) for m in ("alpha", "beta", "gamma") for s in (0, 1)
    }


def test_tiny_preset_end_to_end_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert study.main(["--preset", "tiny", "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    runs = {r["routing"]: r for r in results["runs"]}
    assert set(runs) == {"independent", "handoff"}
    for r in runs.values():
        assert REQUIRED <= set(r) and r["status"] == "completed"
        assert len(r["history"]) == 2 and (out / r["samples_file"]).is_file()
        ck = torch.load(out / "checkpoints" / f"{r['run']}.pt", weights_only=True)
        assert ck["status"] == "completed"
    # Causal: step-wise = teacher-forced, PAD embedding untouched; handoff leaks.
    assert abs(runs["independent"]["leak_gap"]) < 1e-6
    assert runs["independent"]["pad_grad_norm"] == 0.0
    assert runs["independent"]["pad_embedding_drift"] == 0.0
    assert runs["handoff"]["leak_gap"] > 1e-3
    assert runs["handoff"]["pad_grad_norm"] > 0.0
    summary = results["summary"]
    assert len(summary) == 2 and summary[0]["runaway_rate"]["ci95"] is None
    md = (out / "results.md").read_text()
    assert "| model | routing | seeds |" in md and "## Conclusion" in md
    assert (out / "loss_tiny_seed.png").read_bytes()[:4] == b"\x89PNG"
    # What the models remember: causal reaches only back, handoff also forward (the leak).
    for r in runs.values():
        assert ANALYSIS <= set(r) and 0.0 <= r["far_share"] <= 1.0
        analysis = r["analysis"]
        assert analysis["names"] == min(256, results["data"]["val"])
        assert len(analysis["decay"]["curve"]) == 16
        assert len(analysis["context_accuracy"]["top3"]) >= 2
        example = runs["independent"]["analysis"]["example"]
        assert analysis["example"]["index"] == example["index"]  # one name in every heatmap
    assert runs["independent"]["future_share"] == 0.0
    assert runs["handoff"]["future_share"] > 0.01
    assert "## What the models remember" in md and "**Memory reach**" in md
    for kind in ("connectivity", "decay", "context"):
        assert (out / f"{kind}_tiny_seed.png").read_bytes()[:4] == b"\x89PNG"
    # --resume: everything comes back from the checkpoints, bit for bit.
    assert study.main(["--preset", "tiny", "--out", str(out), "--no-progress", "--resume"]) == 0
    again = json.loads((out / "results.json").read_text())
    for a, b in zip(results["runs"], again["runs"]):
        for key in REQUIRED | ANALYSIS | {"final_val_loss", "examples"}:
            assert a[key] == b[key], key


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--preset", "nope"], "invalid choice"),
        (["--models", "delta"], "unknown model 'delta'"),
        (["--routing", "sideways"], "unknown routing policy"),
        (["--protocol", "mine"], "unknown protocol"),
        (["--seeds", "a,b"], "comma-separated integers"),
        (["--epochs", "0"], "positive integer"),
        (["--data", "{tmp}/missing.txt"], "not found"),
        (["--data", "{tmp}/empty.txt"], "empty"),
        (["--data", "{tmp}/caps.txt"], "line 2"),
        (["--data", "{tmp}/long.txt"], "at most 16 characters"),
        (["--preset", "backbones", "--routing", "shared"], "independent routing only"),
        (["--temperature", "0"], "number > 0"),
        (["--save-epochs", "0,5"], "epochs >= 1"),
        (["--split-seed", "-1"], "integer >= 0"),
        (["--sampler", "beam"], "invalid choice"),
        (["--sample-mode", "test"], "invalid choice"),
        (["--routing", "shared_first"], "unknown routing policy"),
        (["--merge", "{tmp}/none.json"], "paths: expected readable results.json files"),
    ],
)
def test_bad_input_gives_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "caps.txt").write_text("anna\nBob\n")
    (tmp_path / "long.txt").write_text("anna\n" + "a" * 17 + "\n")
    argv = [a.format(tmp=tmp_path) for a in args] + ["--out", str(tmp_path / "o")]
    try:
        code = study.main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing trained, nothing written


def test_the_real_command_line_has_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(tmp_path / "none.txt")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--data" in proc.stderr
    help_text = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120
    ).stdout
    for word in ("quick", "seed", "full", "--resume", "handoff", "torchrun", "--dry-run"):
        assert word in help_text


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not installed")
def test_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            "torchrun", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
            "--preset", "tiny", "--routing", "independent", "--device", "cpu",
            "--out", str(out), "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )  # fmt: skip
    # the lines that name a rank's own failure (an abort's "what():") come before
    # torchrun's summary: show both ends
    assert proc.returncode == 0, proc.stderr[:3000] + "\n[...]\n" + proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2
    (run,) = results["runs"]
    assert run["status"] == "completed" and len(run["history"]) == 2
    assert abs(run["leak_gap"]) < 1e-6


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert study.main(["--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA device" in err


# -- the committed reports --------------------------------------------------------------


COMMITTED = sorted(
    str(f.parent.relative_to(ROOT / "docs" / "study"))
    for f in (ROOT / "docs" / "study").rglob("results.json")
)


def test_every_committed_study_folder_is_checked() -> None:
    assert {"quick", "backbones", "seed/merged", "gamma", "mechanism"} <= set(COMMITTED)


@pytest.mark.parametrize("run", COMMITTED)
def test_the_committed_reports_are_what_the_renderer_makes(run: str) -> None:
    """docs/study/<run>/results.md is the rendering of the results.json beside it."""
    folder = ROOT / "docs" / "study" / run
    saved = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    report = study.make_report(saved["preset"])
    assert report.markdown(saved) == (folder / "results.md").read_text(encoding="utf-8")


# -- round 2: the new flags --------------------------------------------------------------


def test_the_round_2_flags_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [
        "--preset", "tiny", "--routing", "independent,shared_last", "--split-seed", "1",
        "--dedupe", "--save-epochs", "1", "--sampler", "prefix", "--greedy",
        "--sample-mode", "train", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    assert study.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == "names_memory_ablation/2"
    assert results["data"]["split_seed"] == 1 and results["data"]["dedupe"] is True
    sampling = {"sampler": "prefix", "temperature": 1.0, "greedy": True, "mode": "train"}
    assert results["sampling"] == sampling and results["save_epochs"] == [1]
    runs = {r["routing"]: r for r in results["runs"]}
    assert set(runs) == {"independent", "shared_last"}
    for r in runs.values():
        assert r["run"].endswith("-split1") and r["split_seed"] == 1
        assert r["sampling"] == sampling
        assert r["variant"] == "prefix sampler, greedy, train mode, deduplicated names"
        for key in ("stepwise_val_loss", "stepwise_val_loss_zero", "runaway_upper95",
                    "loop_rate", "empty_rate", "novelty_nonempty"):  # fmt: skip
            assert key in r, key
        [saved] = r["saved_epochs"]
        assert saved["epoch"] == 1 and saved["val_loss"] == r["history"][0]["val_loss"]
        assert {"runaway_rate", "runaway_upper95", "mean_length", "loop_rate",
                "first_letters", "first_letter_tv"} <= set(saved)  # fmt: skip
        assert r["best_checkpoint"]["epoch"] == r["best_epoch"]
        assert (out / "checkpoints" / f"{r['run']}.e1.pt").is_file()
        assert (out / "checkpoints" / f"{r['run']}.best.pt").is_file()
    # shared_last is Shared(carry="last"), and causal: step-wise from zero = teacher-forced.
    assert abs(runs["shared_last"]["leak_gap"]) < 1e-6
    md = (out / "results.md").read_text()
    assert "## Samples by checkpoint" in md
    assert "| tiny | shared_last [prefix sampler, greedy, train mode, deduplicated names] |" in md
    label = (
        "tiny-shared_last-seed-s0-split1 [prefix sampler, greedy, train mode, deduplicated names]"
    )
    assert f"| {label} | 1 " in md
    assert "split seed 1, names deduplicated" in md


def test_merge_makes_one_report_with_intervals_from_separate_invocations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for seed in (0, 1):
        argv = ["--preset", "tiny", "--seeds", str(seed), "--out", str(tmp_path / f"s{seed}"),
                "--no-progress"]  # fmt: skip
        assert study.main(argv) == 0
    inputs = [str(tmp_path / f"s{seed}" / "results.json") for seed in (0, 1)]
    merged_dir = tmp_path / "merged"
    assert study.main(["--merge", *inputs, "--out", str(merged_dir)]) == 0
    merged = json.loads((merged_dir / "results.json").read_text())
    assert merged["merged_from"] == inputs and len(merged["runs"]) == 4
    handoff = next(e for e in merged["summary"] if e["routing"] == "handoff")
    assert handoff["n_seeds"] == 2 and handoff["runaway_rate"]["ci95"] is not None
    assert handoff["vs_independent"]["best_val_loss"]["n"] == 2
    # The summary is the one of the pooled runs (not of either file).
    pooled = [r for f in inputs for r in json.loads(Path(f).read_text())["runs"]]
    assert summarize_runs(pooled) == merged["summary"]
    md = (merged_dir / "results.md").read_text()
    assert "Merged from 2 results files: `s0/results.json`, `s1/results.json`." in md
    assert "Merged from separate invocations: the runs are those below." in md
    assert "Preset: `tiny`" not in md and "| tiny | handoff | 2 |" in md
    # The same run twice is refused, in one line.
    capsys.readouterr()
    assert study.main(["--merge", inputs[0], inputs[0], "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "each run in one file only" in err


def test_resume_measures_a_finished_run_without_snapshots(tmp_path: Path) -> None:
    """A run trained before snapshots existed (the checkpoint format is unchanged): --resume
    loads its finished checkpoint and reports the new metrics without training."""
    out = tmp_path / "out"
    argv = ["--preset", "tiny", "--routing", "handoff", "--epochs", "3", "--out", str(out),
            "--no-progress"]  # fmt: skip
    assert study.main(argv) == 0
    first = json.loads((out / "results.json").read_text())["runs"][0]
    for snapshot in (out / "checkpoints").glob("*.*.pt"):  # what the old code never wrote
        snapshot.unlink()
    ck = out / "checkpoints" / f"{first['run']}.pt"
    before = ck.read_bytes()
    assert study.main([*argv, "--resume", "--save-epochs", "2"]) == 0
    assert ck.read_bytes() == before  # nothing trained, nothing written
    again = json.loads((out / "results.json").read_text())["runs"][0]
    assert again["history"] == first["history"]
    assert again["runaway_upper95"] == first["runaway_upper95"]
    assert again["saved_epochs"] == []  # no snapshot of epoch 2 was kept
    if first["best_epoch"] == 3:  # the best is the last epoch: the final model's figures
        assert again["best_checkpoint"]["runaway_rate"] == again["runaway_rate"]
    else:
        assert again["best_checkpoint"] is None


def test_the_sampling_flags_reach_the_runs() -> None:
    args = study.make_parser().parse_args(["--temperature", "0.8", "--save-epochs", "10,5,10"])
    assert (args.temperature, args.save_epochs, args.sampler, args.sample_mode) == (
        0.8, (5, 10), "step", "eval")  # fmt: skip
    help_text = study.make_parser().format_help()
    for flag in ("--split-seed", "--dedupe", "--merge", "shared_last", "--sampler",
                 "--temperature", "--greedy", "--sample-mode", "--save-epochs"):  # fmt: skip
        assert flag in help_text


@pytest.mark.parametrize("run", ["gamma", "mechanism"])
def test_a_committed_merge_is_the_merge_of_its_committed_inputs(run: str, tmp_path: Path) -> None:
    """docs/study/gamma (γ's separate runs) and docs/study/mechanism (the handoff runs and
    their re-measurements under other sampling settings): ``--merge`` of the committed
    input files, which lie in the repository, gives the committed summary and runs."""
    saved = json.loads((ROOT / "docs" / "study" / run / "results.json").read_text("utf-8"))
    inputs = [str(ROOT / f) for f in saved["merged_from"]]
    assert len(inputs) >= 2 and all(Path(f).is_file() for f in inputs)
    study.merge_results(inputs, tmp_path / "m")
    again = json.loads((tmp_path / "m" / "results.json").read_text(encoding="utf-8"))
    assert again["summary"] == saved["summary"] and again["runs"] == saved["runs"]


def test_the_committed_merged_report_is_the_merge_of_the_committed_runs(tmp_path: Path) -> None:
    """docs/study/seed/merged: `--merge` of the separate 40-epoch (and α 35-epoch) runs."""
    folder = ROOT / "docs" / "study" / "seed"
    saved = json.loads((folder / "merged" / "results.json").read_text(encoding="utf-8"))
    inputs = [str(ROOT / f) for f in saved["merged_from"]]
    assert len(inputs) == 9 and all(Path(f).is_file() for f in inputs)
    study.merge_results(inputs, tmp_path / "m")
    again = json.loads((tmp_path / "m" / "results.json").read_text(encoding="utf-8"))
    assert again["summary"] == saved["summary"]
    shared = next(e for e in saved["summary"] if (e["model"], e["routing"]) == ("beta", "shared"))
    runs = [r for f in inputs for r in json.loads(Path(f).read_text())["runs"]]
    per_seed = {
        rt: {
            r["seed"]: r["best_val_loss"]
            for r in runs
            if (r["model"], r["routing"]) == ("beta", rt)
        }
        for rt in ("shared", "independent")
    }
    mean, ci, n = paired_difference(per_seed["shared"], per_seed["independent"])
    assert shared["vs_independent"]["best_val_loss"] == {"mean": mean, "ci95": ci, "n": n}
    assert n == 3 and mean - ci < 0 < mean + ci  # what the docs state: no measurable difference


def test_the_long_preset_dry_run_and_its_protocol(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert study.main(["--preset", "long", "--dry-run"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["model"], d["routing"], d["protocol"]) for d in lines] == [
        (m, "independent", "fixed") for m in ("gru", "lstm", "min_gru", "min_lstm", "lru")
    ]
    gru = lines[0]["params"]
    assert all(abs(d["params"] / gru - 1) < 0.01 for d in lines), lines
    assert "long context" in study.make_parser().format_help()
    code = study.main(["--preset", "long", "--protocol", "seed", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--protocol seed" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
