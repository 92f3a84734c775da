"""Experiment specs (TOML): parsing, grids, overrides, --quick, and the mistakes they refuse."""

import dataclasses

import pytest

from repanalysis.cli import main
from repanalysis.errors import UserError
from repanalysis.experiments import Overrides, load_spec, parse, preset
from repanalysis.experiments.selection import FIRST

SPEC = """
name = "tiny"
description = "a test"
dataset = "digits"
seeds = 2

[experiments.grid]
claims = ["trains_well"]
settings = { model = "mlp", width = 8, steps = 10, batch_norm = true }
grid = { rule = ["backprop", "sg"], depth = [2, 4], activation = ["relu", "tanh"] }
quick = { steps = 3, depth = [2] }

[experiments.other]
settings = { rule = "backprop", dataset = "linear-regression-2d", depth = 3, steps = 5 }
"""


def test_a_grid_expands_to_every_combination_and_seed_with_shared_settings():
    spec = parse(SPEC, "tiny.toml")
    runs = spec.runs()
    grid = [r for r in runs if r.experiment == "grid"]
    assert len(grid) == 2 * 2 * 2 * 2 and len(runs) == len(grid) + 2
    assert {(r.config.rule, r.config.depth, r.config.activation, r.config.seed) for r in grid} == {
        (rule, d, a, s) for rule in ("backprop", "sg") for d in (2, 4) for a in ("relu", "tanh") for s in (0, 1)}
    assert all(r.config.width == 8 and r.config.batch_norm and r.config.dataset == "digits" for r in grid)
    other = [r for r in runs if r.experiment == "other"]
    assert {r.config.dataset for r in other} == {"linear-regression-2d"}  # a setting beats the spec's default
    assert len({r.name for r in runs}) == len(runs)
    assert grid[0].name == "grid_digits_mlp_d2_relu_backprop_s0.h5"
    # runs of a cell differ only in rule and seed
    assert dict(grid[0].cell) == {"depth": 2, "activation": "relu"}
    assert [r.config.seed for r in runs[: len(runs) // 2]] == [0] * (len(runs) // 2)  # seed by seed


def test_overrides_replace_grid_axes_and_quick_shrinks():
    spec = parse(SPEC, "tiny.toml")
    runs = spec.runs(overrides=Overrides(depths=[7], activations=["tanh"], seed_count=1, steps=4))
    grid = [r for r in runs if r.experiment == "grid"]
    assert {(r.config.depth, r.config.activation) for r in grid} == {(7, "tanh")}
    assert len(grid) == 2 and all(r.config.steps == 4 for r in runs)
    quick = spec.runs(quick=True)
    assert {r.config.depth for r in quick if r.experiment == "grid"} == {2}
    assert {r.config.steps for r in quick if r.experiment == "grid"} == {3}
    with pytest.raises(UserError, match="--widths: no experiment .* varies width"):
        spec.runs(overrides=Overrides(widths=[16]))
    with pytest.raises(UserError, match="--seed-count must be at least 1"):
        spec.runs(overrides=Overrides(seed_count=0))


BY = """
[experiments.a]
settings = { steps = 10, bn_gamma_init = 0.9 }
grid = { rule = ["backprop"], depth = [2, 50], activation = ["relu", "tanh"] }
quick = { steps = 3 }
[experiments.a.by.activation]
relu = { bn_beta_init = 2.0 }
tanh = { bn_gamma_init = 0.5 }
[experiments.a.by.depth]
50 = { steps = 20 }
"""


def test_by_brings_settings_with_one_grid_value_and_the_command_line_still_wins():
    runs = {(r.config.depth, r.config.activation): r.config for r in parse(BY, "by.toml").runs()}
    assert (runs[2, "relu"].bn_beta_init, runs[2, "relu"].bn_gamma_init) == (2.0, 0.9)  # shared gamma kept
    assert (runs[2, "tanh"].bn_beta_init, runs[2, "tanh"].bn_gamma_init) == (0.0, 0.5)  # by beats shared
    assert runs[50, "tanh"].steps == 20 and runs[2, "tanh"].steps == 10
    assert {r.config.steps for r in parse(BY, "by.toml").runs(quick=True)} == {3}  # --quick beats by
    sliced = parse(BY, "by.toml").runs(overrides=Overrides(depths=[50], activations=["sigmoid"], steps=7))
    assert {(r.config.steps, r.config.bn_beta_init, r.config.bn_gamma_init) for r in sliced} == {(7, 0.0, 0.9)}


@pytest.mark.parametrize("text, message", [
    ("name = 'x'", "no \\[experiments"),
    ("[experiments.a]\ngrid = { rule = ['sg'] }\nby = { width = { 8 = { lr = 1.0 } } }", "by.width: 'width' is not an axis"),
    ("[experiments.a]\ngrid = { rule = ['sg'], depth = [2] }\nby = { depth = { 2 = { rule = 'fa' } } }", "by.depth.2 sets rule"),
    ("[experiments.a]\ngrid = { rule = ['sg'], depth = [2] }\nby = { depth = { 2 = { lrr = 1 } } }", "unknown setting\\(s\\) lrr"),
    ("[experiments.a]\ngrid = { rule = ['sg'], depth = [2] }\nby = { depth = 3 }", "by must be a table of tables"),
    ("nme = 'x'\n[experiments.a]\ngrid = { rule = ['sg'] }", "unknown key\\(s\\) nme"),
    ("[experiments.a]\ngrid = { rule = ['sg'], depht = [2] }", "unknown setting\\(s\\) depht"),
    ("[experiments.a]\ngrid = { rule = 'sg' }", "grid.rule must be a non-empty list"),
    ("[experiments.a]\nsettings = { depth = 3 }", "name the rule"),
    ("[experiments.a]\ngrid = { rule = ['sg'] }\nclaims = ['faster']", "unknown claims faster"),
    ("[experiments.a]\ngrid = { rule = ['sg'] }\nclaims = ['rsa_to_last']",
     "experiments.a: claim rsa_to_last was renamed rsa_to_last_layer$"),
    ("[experiments.a]\ngrid = { rule = ['sg'] }\nmeasures = ['linear_cka', 'rsa_to_last_euclidean', 'linear_cka_to_last']",
     "experiments.a: measure rsa_to_last_euclidean was renamed rsa_to_last_layer_euclidean, "
     "linear_cka_to_last was renamed linear_cka_to_last_checkpoint$"),
    ("[experiments.a]\ngrid = { rule = ['nope'] }", "unknown rule 'nope'"),
    ("[experiments.a]\ngrid = { rule = ['sg'], seed = [1] }", "seeds are set by the spec"),
    ("seeds = 0\n[experiments.a]\ngrid = { rule = ['sg'] }", "seeds must be a positive number of seeds or a list"),
    ("[experiments.a\n", "not valid TOML"),
])
def test_mistakes_in_a_spec_are_one_line_errors_naming_the_file(text, message):
    with pytest.raises(UserError, match=message) as err:
        parse(text, "my.toml")
    assert str(err.value).startswith("my.toml")


def test_the_presets_plan_the_runs_they_promise():
    paper = preset("paper")
    runs = paper.runs(choice=FIRST)
    assert {r.config.depth for r in runs} == {5, 10, 20, 50} and {r.config.activation for r in runs} == {"relu", "tanh"}
    assert {r.config.rule for r in runs} == {"backprop", "sg"} and {r.config.seed for r in runs} == {1, 2, 3, 4, 5}
    assert all(r.config.validation == 10000 and r.config.hold_steps == 200 and not r.config.sg_warmup for r in runs)
    tried = paper.candidate_runs()  # the learning rate of each rule, chosen at depth 50 on seed 0, 3 candidates each
    assert {(r.config.rule, r.config.lr, r.config.depth, r.config.seed) for r in tried} == {
        (rule, lr, 50, 0) for rule in ("backprop", "sg") for lr in (5e-4, 1e-3, 2e-3)}
    assert all(r.config.dataset == "mnist" and r.config.width == 256 and r.config.batch_norm for r in runs)
    assert all(r.config.init == "orthogonal" for r in runs)  # the stabilisers of README "Training deep stacks"
    assert {(r.config.activation, r.config.bn_gamma_init, r.config.bn_beta_init) for r in runs} == {
        ("relu", 1.0, 2.0), ("tanh", 0.5, 0.0)}
    sliced = paper.runs(overrides=Overrides(depths=[50], activations=["relu"], seed_count=1), choice=FIRST)
    assert [r.name for r in sliced] == ["depth_mnist_mlp_d50_relu_backprop_s1.h5", "depth_mnist_mlp_d50_relu_sg_s1.h5"]
    assert {r.name for r in sliced} <= {r.name for r in runs}  # a slice reuses the full preset's runs
    digits = preset("digits").runs()
    rules = {e: {r.config.rule for r in digits if r.experiment == e} for e in ("main", "regression", "linear")}
    assert rules == {"main": {"backprop", "sg", "dni", "cdni", "fa", "dfa"},
                     "regression": {"backprop", "fa", "dfa", "kickback"}, "linear": {"backprop", "sg"}}
    with pytest.raises(UserError, match="unknown preset 'nope'; choose one of async, digits, explain, paper"):
        preset("nope")


def test_the_explain_preset_gives_every_arm_its_backprop_twin():
    runs = preset("explain").runs()
    arms = {}
    for r in runs:
        arms.setdefault((r.experiment, dict(r.axes)["arm"]), set()).add((r.config.rule, r.config.signal_cosine,
                                                                         r.config.sg_lr, r.config.sg_condition))
    assert arms[("arms", "noisy_0.05")] == {("noisy", 0.05, 1e-3, "label")}
    assert arms[("arms", "sg_slow")] == {("sg", 1.0, 1e-4, "label")}
    assert arms[("arms", "sg_unconditioned")] == {("sg", 1.0, 1e-3, "none")}
    for experiment in ("arms", "depth50"):
        mine = [r for r in runs if r.experiment == experiment]
        twins = {(r.cell, r.config.seed) for r in mine if r.config.rule == "backprop"}
        assert {(r.cell, r.config.seed) for r in mine} == twins  # every run has its twin: same cell, same seed
        assert len({r.config.hold_steps for r in mine}) == 1 and mine[0].config.hold_steps == 200
        assert {r.config.seed for r in mine} == set(range(5)) and all(r.config.record_every == 300 for r in mine)


@pytest.mark.parametrize("arms, grid, message", [
    ('a = { sg_lr = 1e-4 }', 'arm = ["a"]', "arms.a must name its rule"),
    ('a = { rule = "sg" }', 'arm = ["a", "b"]', "grid.arm names b, which arms does not define"),
    ('a = { rule = "sg", depth = 3 }', 'arm = ["a"], depth = [2]', "arms.a sets depth, which the grid varies"),
    ('a = { rule = "sg", wdith = 3 }', 'arm = ["a"]', "unknown setting.s. wdith"),
    ('a = { rule = "sg" }', 'rule = ["sg"]', "arms and grid.arm go together"),
])
def test_arms_are_checked_when_the_spec_is_loaded(arms, grid, message):
    text = f"[experiments.e]\ngrid = {{ {grid} }}\n[experiments.e.arms]\n{arms}\n"
    with pytest.raises(UserError, match=message):
        parse(text, "s.toml")


def test_reproduce_command_line_refuses_bad_specs_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[experiments.a]\ngrid = { rule = ['sg'], depht = [2] }")
    assert main(["reproduce", "--spec", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert main(["reproduce", "--preset", "paper", "--widths", "7", "--out", str(tmp_path / "o")]) == 2
    assert main(["reproduce", "--preset", "paper", "--depths", "five", "--out", str(tmp_path / "o")]) == 2
    assert main(["reproduce", "--preset", "paper", "--spec", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 4 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_the_async_preset_compares_stages_in_processes_with_the_rule_in_one():
    runs = preset("async").runs()
    assert len(runs) == 5 * 7 and all(r.config.dataset == "mnist" for r in runs)  # 5 seeds, 7 variants
    variants = {(r.config.rule, r.config.stages) for r in runs}
    assert variants == {("backprop", 1)} | {(rule, k) for rule in ("dni", "cdni") for k in (1, 2, 4)}
    assert {r.cell for r in runs} == {()}  # rule and stages vary how one network is trained: one cell
    assert "unlocked_mnist_mlp_stages2_cdni_s1.h5" in {r.name for r in runs}
    assert all(not r.config.sync for r in runs)


@pytest.mark.parametrize("exclude,message", [
    ("[{ depth = 3 }]", "exclude names depth, which the grid does not vary"),
    ("{ rule = 'sg' }", "exclude must be a list of tables"),
    ("[{}]", "exclude must be a list of tables"),
])
def test_an_exclude_entry_must_name_grid_values(exclude, message):
    with pytest.raises(UserError, match=message):
        parse(f"[experiments.a]\ngrid = {{ rule = ['sg', 'dni'], stages = [1, 2] }}\nexclude = {exclude}\n", "my.toml")


def test_exclude_leaves_out_every_run_that_matches_an_entry():
    spec = parse("seeds = 1\n[experiments.a]\ngrid = { rule = ['backprop', 'sg', 'dni'], stages = [1, 2] }\n"
                 "exclude = [{ rule = 'backprop', stages = 2 }, { rule = 'sg', stages = 2 }]\n", "my.toml")
    assert [(r.config.rule, r.config.stages) for r in spec.runs()] == [
        ("backprop", 1), ("sg", 1), ("dni", 1), ("dni", 2)]


SELECTING = """
seeds = [3, 4]
[experiments.e]
settings = { model = "mlp", width = 8, steps = 10, validation = 100 }
grid = { rule = ["backprop", "sg"], depth = [2, 4], activation = ["relu", "tanh"] }
quick = { depth = [2] }
[experiments.e.select]
seeds = [0]
cells = { depth = [4] }
candidates.backprop = [{ lr = 1e-3 }, { lr = 1e-2 }]
candidates.sg = [{ lr = 1e-3 }, { lr = 1e-2, sg_lr = 1e-3 }]
"""


def test_a_selection_tries_every_candidate_of_every_rule_in_its_cells_on_its_own_seeds():
    spec = parse(SELECTING, "s.toml")
    tried = spec.candidate_runs()
    assert {(r.config.rule, r.candidate, r.config.depth, r.config.activation, r.config.seed) for r in tried} == {
        (rule, k, 4, a, 0) for rule in ("backprop", "sg") for k in (0, 1) for a in ("relu", "tanh")}
    assert {r.config.lr for r in tried if r.candidate == 1} == {1e-2}
    assert tried[0].name == "e_digits_mlp_d4_relu_c0_backprop_s0.h5"
    # under --quick the grid has no depth 4 any more: the selection runs at its last value
    assert {r.config.depth for r in spec.candidate_runs(quick=True)} == {2}
    with pytest.raises(ValueError, match="plan it with a choice"):
        spec.runs()


def test_each_rule_takes_the_candidate_with_the_best_validation_metric_per_key(monkeypatch, tmp_path):
    from repanalysis.experiments import selection

    spec = parse(SELECTING, "s.toml")
    tried = spec.candidate_runs()
    metric = {("backprop", "relu", 0): 0.9, ("backprop", "relu", 1): 0.8, ("backprop", "tanh", 0): 0.7,
              ("backprop", "tanh", 1): 0.7, ("sg", "relu", 0): 0.5, ("sg", "relu", 1): 0.95,
              ("sg", "tanh", 0): 0.6, ("sg", "tanh", 1): float("nan")}
    by_name = {r.name: metric[(r.config.rule, r.config.activation, r.candidate)] for r in tried}
    monkeypatch.setattr(selection, "final_metric", lambda path, name: by_name[path.name])
    failed = {r.name: "boom" for r in tried if (r.config.rule, r.config.activation, r.candidate) == ("sg", "tanh", 0)}
    choice = selection.choose(spec.experiments, tried, tmp_path, failed)
    chosen = {(rule, dict(key)["activation"]): k for (_, rule, key), k in choice.index.items()}
    # ties go to the earlier candidate; a failed candidate and a NaN metric are never chosen
    assert chosen == {("backprop", "relu"): 0, ("backprop", "tanh"): 0, ("sg", "relu"): 1}
    runs = spec.runs(choice=dataclasses.replace(choice, index={**choice.index, ("e", "sg", (("activation", "tanh"),)): 0}))
    assert {(r.config.rule, r.config.activation, r.config.lr, r.config.sg_lr) for r in runs} == {
        ("backprop", "relu", 1e-3, 1e-3), ("backprop", "tanh", 1e-3, 1e-3), ("sg", "relu", 1e-2, 1e-3),
        ("sg", "tanh", 1e-3, 1e-3)}
    assert {r.config.depth for r in runs} == {2, 4} and {r.config.seed for r in runs} == {3, 4}
    with pytest.raises(UserError, match="every candidate's runs failed"):
        spec.runs(choice=choice)  # sg with tanh: nothing was chosen


@pytest.mark.parametrize("change, message", [
    (("candidates.sg = [{ lr = 1e-3 }, { lr = 1e-2, sg_lr = 1e-3 }]", "candidates.sg = [{ lr = 1e-3 }]"),
     "the same number of candidates"),
    ((", validation = 100 ", " "), "hold one out in the settings"),
    (("seeds = [0]", "seeds = [3]"), "would be both selection and reported seeds"),
    (("cells = { depth = [4] }", "cells = { depth = [5] }"), "cells.depth must be a non-empty list of the grid's"),
    (("cells = { depth = [4] }", "cells = { rule = [\"sg\"] }"), "not a grid axis that makes cells"),
    (("candidates.backprop = [{ lr = 1e-3 }, { lr = 1e-2 }]\n", ""), "candidates must name every rule"),
    (("{ lr = 1e-2 }]", "{ depth = 3 }]"), "which the grid, the rule or the selection itself decides"),
    (("seeds = [0]", "seeds = [0]\nmetric = \"test_acc\""), "unknown metric 'test_acc'"),
])
def test_a_selection_is_checked_when_the_spec_is_loaded(change, message):
    old, new = change
    assert old in SELECTING
    with pytest.raises(UserError, match=message):
        parse(SELECTING.replace(old, new, 1), "s.toml")


def test_seeds_may_be_a_list_and_seed_count_n_takes_the_first_n_then_the_next_integers():
    spec = parse(SELECTING.replace("[experiments.e.select]", "[experiments.e.unused]").split("[experiments.e.unused]")[0],
                 "s.toml")
    assert {r.config.seed for r in spec.runs()} == {3, 4}
    assert {r.config.seed for r in spec.runs(overrides=Overrides(seed_count=1))} == {3}
    assert {r.config.seed for r in spec.runs(overrides=Overrides(seed_count=4))} == {3, 4, 5, 6}
    assert list(dict.fromkeys(r.config.seed for r in spec.runs(overrides=Overrides(seeds=[9, 0])))) == [9, 0]
    for seeds, message in (([1, 1], "distinct seeds"), ([], "distinct seeds"), ([-1], "distinct seeds"),
                           (4, r"seed_count \(--seed-count 4\)")):
        with pytest.raises(UserError, match=message):
            spec.runs(overrides=Overrides(seeds=seeds))
    with pytest.raises(UserError, match="give --seeds or --seed-count, not both"):
        spec.runs(overrides=Overrides(seeds=[1], seed_count=1))
    for bad in ("[1, 1]", "[]", "[-1]", "0", "[1.5]"):
        with pytest.raises(UserError, match="seeds must be"):
            parse(f"seeds = {bad}\n" + SPEC.split("seeds = 2\n")[1], "s.toml")


TRAVERSAL = """
seeds = 1
[experiments."../../precious"]
tables = ["analysis"]
settings = { width = 8, depth = 2, steps = 2, probe_size = 20 }
grid = { rule = ["backprop", "sg"] }
"""


@pytest.mark.parametrize("text, message", [
    (TRAVERSAL, "experiment name '../../precious' cannot be a file name"),
    ("name = '../x'\n[experiments.a]\ngrid = { rule = ['backprop'] }", "name '../x' cannot be a file name"),
    ("[experiments.a]\ngrid = { rule = ['backprop'], dataset = ['../../x'] }", "dataset value '../../x' cannot be part"),
    ("[experiments.a]\nsettings = { rule = 'backprop', model = '/tmp/x' }", "model value '/tmp/x'"),
    ("[experiments.a]\ngrid = { rule = ['backprop'], activation = ['a/b'] }", "activation value 'a/b'"),
    ("[experiments.a]\ngrid = { rule = ['backprop'] }\nquick = { dataset = '..' }", "dataset value '..'"),
    ("[experiments.'.hidden']\ngrid = { rule = ['backprop'] }", "experiment name '.hidden'"),
])
def test_names_from_a_spec_cannot_leave_the_output_folder(text, message):
    with pytest.raises(UserError, match=message):
        parse(text, "my.toml")


def test_a_traversal_spec_is_refused_before_anything_is_written(tmp_path, capsys):
    spec = tmp_path / "traversal.toml"
    spec.write_text(TRAVERSAL)
    precious = tmp_path / "precious_analysis.csv"
    precious.write_text("keep me")
    out = tmp_path / "a" / "b" / "out"
    assert main(["reproduce", "--spec", str(spec), "--out", str(out), "--workers", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot be a file name" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["precious_analysis.csv", "traversal.toml"]
    assert precious.read_text() == "keep me"


def test_list_values_name_runs_without_brackets():
    spec = parse("seeds = 1\n[experiments.a]\nsettings = { rule = 'sg', depth = 4 }\ngrid = { sg_at = [[1, 2], [3]] }",
                 "my.toml")
    assert [r.name for r in spec.runs()] == ["a_digits_mlp_sg_at1-2_sg_s0.h5", "a_digits_mlp_sg_at3_sg_s0.h5"]


@pytest.mark.parametrize("keys, message", [
    ("settings = { width = 'x' }", "width must be an integer, got 'x'"),
    ("settings = { steps = 1.5 }", "steps must be an integer, got 1.5"),
    ("settings = { lr = 'fast' }", "lr must be a number, got 'fast'"),
    ("settings = { batch_norm = 1 }", "batch_norm must be true or false, got 1"),
    ("settings = { sg_at = ['a'] }", "sg_at must be a list of integers or left out"),
    ("settings = { depth = 2 }\ngrid = { rule = ['sg'], width = [8, 'x'] }", "width must be an integer, got 'x'"),
    ("probe_folds = 'x'", "probe_folds must be an integer of at least 2, got 'x'"),
    ("rdm_depths = ['a']", "rdm_depths must be a list of positive integers, got \\['a'\\]"),
    ("claims = 'trains_well'", "claims must be a list of strings"),
])
def test_spec_values_of_the_wrong_type_are_refused_naming_the_field(keys, message):
    text = f"[experiments.a]\n{keys}\n" + ("" if "grid" in keys else "grid = { rule = ['sg'] }\n")
    with pytest.raises(UserError, match=message) as err:
        parse(text, "my.toml")
    assert str(err.value).startswith("my.toml: experiments.a")


def test_a_huge_grid_is_refused_saying_how_many_runs_it_would_make():
    axis = ", ".join(map(str, range(1, 101)))
    text = f"seeds = 2\n[experiments.a]\ngrid = {{ rule = ['backprop', 'sg'], depth = [{axis}], width = [{axis}] }}"
    with pytest.raises(UserError, match="would make up to 40,000 runs .* at most 10,000"):
        parse(text, "my.toml")


def test_a_spec_that_is_not_text_is_refused_at_once(tmp_path):
    import subprocess
    import sys

    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"name = '\xff\xfe'\n")
    with pytest.raises(UserError, match="binary.toml: not a text file"):
        load_spec(binary)
    proc = subprocess.run([sys.executable, "-m", "repanalysis.cli", "reproduce", "--spec", "/dev/urandom", "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr == "repanalysis: error: /dev/urandom: not a text file (a spec is TOML, in UTF-8)\n"
    assert not (tmp_path / "o").exists()
