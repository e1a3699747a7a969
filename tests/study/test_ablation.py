"""recurrentkit.study.ablation as package code: run specs, the data, strict results files.

The whole study (presets end to end, resume, torchrun, the command line) is tested through
its script in tests/examples/test_names_memory_ablation.py.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from recurrentkit import routing as rk_routing
from recurrentkit.analysis import analyse_run
from recurrentkit.errors import ConfigError
from recurrentkit.study import ablation, data
from recurrentkit.study.lm import count_parameters
from recurrentkit.study.train import TrainConfig, fit


def test_run_specs_take_the_override_then_the_preset_then_the_spec() -> None:
    quick = ablation.PRESETS["quick"]
    keys = ablation.plan_runs(quick)
    specs = ablation.run_specs(quick, keys)
    assert list(specs) == ["alpha", "beta"]
    assert (specs["alpha"].epochs, specs["beta"].epochs) == (3, 2)  # the preset's
    assert specs["beta"].hidden == ablation.SPECS["beta"].hidden
    assert {s.epochs for s in ablation.run_specs(quick, keys, epochs=7).values()} == {7}
    seed = ablation.PRESETS["seed"]
    gamma = ablation.run_specs(seed, ablation.plan_runs(seed, models=("gamma",)))
    assert gamma["gamma"].epochs == ablation.SPECS["gamma"].epochs  # the spec's own


def test_load_data_splits_encodes_and_is_seeded(tmp_path: Path) -> None:
    sets = ablation.load_data(None, ("seed", "fixed"), max_names=50)
    assert sets["data"] == {"source": "packaged names.txt", "train": 40, "val": 10}
    for p in ("seed", "fixed"):
        x, y = sets[p]["train"]
        assert x.shape == y.shape == (40, ablation.MAX_LEN)
        assert sets[p]["val"][0].shape == (10, ablation.MAX_LEN)
    again = ablation.load_data(None, ("fixed",), max_names=50)
    assert torch.equal(again["fixed"]["train"][0], sets["fixed"]["train"][0])
    names = sets["names"]
    assert len(names["train_names"]) <= 40
    assert not names["heldout_names"] & names["train_names"]
    assert math.isclose(sum(names["first_letters"].values()), 1.0)
    words = tmp_path / "words.txt"
    words.write_text("anna\nbob\ncarl\ndora\neve\n")
    own = ablation.load_data(words, ("seed",))
    assert own["data"] == {"source": str(words), "train": 4, "val": 1}
    assert "fixed" not in own


def test_load_data_names_what_is_wrong(tmp_path: Path) -> None:
    one = tmp_path / "one.txt"
    one.write_text("anna\n")
    with pytest.raises(ConfigError, match="at least 2 names") as err:
        ablation.load_data(one)
    assert err.value.argument == "path"
    with pytest.raises(ConfigError) as err:
        ablation.load_data(tmp_path / "missing.txt")
    assert err.value.argument == "path"
    long = tmp_path / "long.txt"
    long.write_text("anna\n" + "a" * (ablation.MAX_LEN + 1) + "\n")
    with pytest.raises(ConfigError, match="at most 16 characters") as err:
        ablation.load_data(long, ("seed",))
    assert err.value.argument.startswith("words[")


def test_results_files_are_strict_json_and_the_report(tmp_path: Path) -> None:
    run = {
        "run": "tiny-handoff-seed-s0", "model": "tiny", "routing": "handoff", "protocol": "seed",
        "seed": 0, "status": "interrupted", "best_val_loss": math.nan,
    }  # fmt: skip
    results = {
        "schema": ablation.SCHEMA, "command": "python examples/names_memory_ablation.py",
        "preset": "tiny", "device": "cpu", "torch": torch.__version__, "threads": 1,
        "world_size": 1, "data": {"source": "x", "train": 4, "val": 1}, "num_samples": 2,
        "original": ablation.ORIGINAL, "runs": [run],
        "summary": [], "wall_seconds": 0.0,
    }  # fmt: skip
    ablation.write_results(tmp_path, results, time.perf_counter())
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["runs"][0]["best_val_loss"] is None and saved["summary"] == []
    assert not (tmp_path / "results.json.tmp").exists()
    md = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert md == ablation.make_report("tiny").markdown(saved)


def test_the_study_module_is_reached_from_the_subpackage() -> None:
    import recurrentkit.study as study

    assert study.ablation is ablation and study.data is data
    assert ablation.rank() == 0  # no process group here


# -- round 2: split seed, deduplication, shared_last, sampling variants ------------------


def test_the_split_seed_changes_the_split_and_0_is_the_old_one() -> None:
    old = ablation.load_data(None, ("seed",), max_names=200)
    same = ablation.load_data(None, ("seed",), max_names=200, split_seed=0)
    other = ablation.load_data(None, ("seed",), max_names=200, split_seed=3)
    assert old["data"] == same["data"] == {"source": "packaged names.txt", "train": 160, "val": 40}
    assert torch.equal(old["seed"]["val"][0], same["seed"]["val"][0])
    assert old["names"]["train_names"] != other["names"]["train_names"]
    assert other["data"]["split_seed"] == 3 and other["data"]["dedupe"] is False


def test_dedupe_drops_repeated_names_before_the_split(tmp_path: Path) -> None:
    words = tmp_path / "w.txt"
    words.write_text("anna\nbob\nanna\nzed\nbob\neve\nanna\nlea\nmia\nkai\n")
    sets = ablation.load_data(words, ("seed",), dedupe=True)
    assert sets["data"]["train"] + sets["data"]["val"] == 7  # unique names
    assert sets["data"]["words"] == 10
    assert not (sets["names"]["train_names"] & sets["names"]["heldout_names"])
    full = data.load_words()
    assert len(full) == 32_033 and len(set(full)) == 29_494


def test_shared_last_is_shared_carrying_the_top_layers_state() -> None:
    policy = ablation.routing_policy("shared_last")
    assert isinstance(policy, rk_routing.Shared) and policy.carry == "last"
    assert ablation.routing_policy("shared") == "shared"
    model = ablation.build_model(ablation.SPECS["tiny"], "shared_last")
    assert model.stack.routing.carry == "last"
    with pytest.raises(ConfigError, match="routing"):
        ablation.routing_policy("sideways")


def test_sampling_variants_are_labelled_and_checked() -> None:
    assert ablation.Sampling().label == ""
    assert (
        ablation.Sampling("prefix", 0.8, False, "train").label
        == "prefix sampler, T=0.8, train mode"
    )
    assert ablation.Sampling(greedy=True, temperature=0.5).label == "greedy"
    with pytest.raises(ConfigError, match="sampler"):
        ablation.Sampling(sampler="beam")
    with pytest.raises(ConfigError, match="temperature"):
        ablation.Sampling(temperature=0.0)
    key = ablation.RunKey("tiny", "handoff", "seed", 0, split_seed=2)
    assert key.id == "tiny-handoff-seed-s0-split2"
    assert ablation.RunKey("tiny", "handoff", "seed", 0).id == "tiny-handoff-seed-s0"


def test_stream_data_holds_the_names_in_order_and_checks_its_arguments() -> None:
    sets = ablation.load_data(None, ("fixed",), max_names=300, stream_len=64)
    train, val = ablation.split_words(max_names=300)
    assert sets["data"]["stream_len"] == 64 and sets["fixed"]["stream_len"] == 64
    for words, (x, y) in zip((train, val), (sets["fixed"]["train"], sets["fixed"]["val"])):
        assert x.shape == y.shape and x.shape[1] == 64
        letters = "".join(data.itos[i] for i in y[y != data.IGNORE_INDEX].tolist())
        assert letters.split(".")[:-1] == words  # every name, in order, each ended by '.'
        assert int((x == data.START).sum()) == len(words)  # each read from its <S>
    per_name = ablation.load_data(None, ("fixed",), max_names=300)
    assert "stream_len" not in per_name["data"]
    with pytest.raises(ConfigError) as err:
        ablation.load_data(None, ("seed",), max_names=300, stream_len=64)
    assert err.value.argument == "protocols"
    with pytest.raises(ConfigError) as err:
        ablation.load_data(None, ("fixed",), max_names=300, stream_len=ablation.MAX_LEN - 1)
    assert err.value.argument == "stream_len"


def test_the_long_preset_matches_sizes_and_batches_streams() -> None:
    long = ablation.PRESETS["long"]
    assert long.stream_len == 256 and long.compare == "model"
    specs = ablation.run_specs(long, ablation.plan_runs(long))
    assert list(specs) == list(ablation.STREAM_MODELS)
    assert {s.batch_size for s in specs.values()} == {long.batch_size}
    counts = {
        m: count_parameters(ablation.build_model(s, "independent", "fixed"))
        for m, s in specs.items()
    }
    for m, n in counts.items():
        assert abs(n / counts["gru"] - 1) < 0.01, (m, n, counts["gru"])
    cells = {m: type(ablation.build_model(s, "independent").stack.cells[1]).__name__
             for m, s in specs.items()}  # fmt: skip
    assert cells == {
        "gru": "GRUCell",
        "lstm": "LSTMCell",
        "min_gru": "MinGRUCell",
        "min_lstm": "MinLSTMCell",
        "lru": "LRUCell",
    }


def test_a_gru_trained_on_streams_reaches_into_earlier_names() -> None:
    """Connectivity at distance >= 16 (beyond any name) is there when the state is
    carried from name to name, and exactly zero when it restarts at every ``<S>``."""
    sets = ablation.load_data(None, ("fixed",), max_names=400, stream_len=128)
    spec = replace(ablation.SPECS["gru"], embed=8, hidden=16, batch_size=8)
    torch.manual_seed(0)
    model = ablation.build_model(spec, "independent", "fixed")
    config = TrainConfig(epochs=1, batch_size=8, lr=1e-2, seed=0, progress=False)
    fit(model, sets["fixed"]["train"], sets["fixed"]["val"], config)
    xv, yv = sets["fixed"]["val"]
    carried = analyse_run(model, xv, yv, names=4, far=16)
    assert carried.decay.far_share_at(16) > 1e-6
    model.reset_token = data.START
    restarted = analyse_run(model, xv, yv, names=4, far=16)
    assert restarted.decay.far_share_at(16) == 0.0


def test_the_long_preset_path_end_to_end(tmp_path: Path) -> None:
    long = ablation.PRESETS["long"]
    keys = ablation.plan_runs(long)
    specs = {
        m: replace(s, embed=8, hidden=8, epochs=1)
        for m, s in ablation.run_specs(long, keys).items()
    }
    sets = ablation.load_data(None, ("fixed",), max_names=120, stream_len=long.stream_len)
    status = ablation.run_study(
        "long", keys, specs, sets, out=tmp_path, device=torch.device("cpu"),
        num_samples=10, command="test", progress=False,
    )  # fmt: skip
    assert status == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["model"] for r in results["runs"]] == list(ablation.STREAM_MODELS)
    for r in results["runs"]:
        assert r["status"] == "completed"
        assert set(r["reach"]) == {"16", "64"}
        assert math.isclose(r["far_share"], r["reach"]["16"], rel_tol=1e-12)
        assert r["analysis"]["decay"]["far"] == 16
        assert len(r["analysis"]["decay"]["curve"]) == 256
        # a causal model: one token at a time gives the teacher-forced loss
        assert math.isclose(r["stepwise_val_loss"], r["final_val_loss"], rel_tol=1e-5)
    text = (tmp_path / "results.md").read_text()
    assert "## Memory reach on streams" in text and "share at d ≥ 64" in text
    assert "far share (d ≥ 16)" in text and "64 seeded validation stream rows" in text
    assert "reach_independent_fixed.png" in results["memory_plots"]
    assert (tmp_path / "reach_independent_fixed.png").is_file()
