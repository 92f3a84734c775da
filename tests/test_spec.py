"""Experiment specs (TOML): parsing, grids, overrides, --quick, and the mistakes they refuse."""

import pytest

from repanalysis.cli import main
from repanalysis.experiments import Overrides, load_spec, parse, preset
from repanalysis.errors import UserError

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
    runs = spec.runs(overrides=Overrides(depths=[7], activations=["tanh"], seeds=1, steps=4))
    grid = [r for r in runs if r.experiment == "grid"]
    assert {(r.config.depth, r.config.activation) for r in grid} == {(7, "tanh")}
    assert len(grid) == 2 and all(r.config.steps == 4 for r in runs)
    quick = spec.runs(quick=True)
    assert {r.config.depth for r in quick if r.experiment == "grid"} == {2}
    assert {r.config.steps for r in quick if r.experiment == "grid"} == {3}
    with pytest.raises(UserError, match="--widths: no experiment .* varies width"):
        spec.runs(overrides=Overrides(widths=[16]))
    with pytest.raises(UserError, match="--seeds must be at least 1"):
        spec.runs(overrides=Overrides(seeds=0))


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
    ("[experiments.a]\ngrid = { rule = ['nope'] }", "unknown rule 'nope'"),
    ("[experiments.a]\ngrid = { rule = ['sg'], seed = [1] }", "seeds are set by the spec"),
    ("seeds = 0\n[experiments.a]\ngrid = { rule = ['sg'] }", "seeds must be a positive integer"),
    ("[experiments.a\n", "not valid TOML"),
])
def test_mistakes_in_a_spec_are_one_line_errors_naming_the_file(text, message):
    with pytest.raises(UserError, match=message) as err:
        parse(text, "my.toml")
    assert str(err.value).startswith("my.toml")


def test_the_presets_plan_the_runs_they_promise():
    paper = preset("paper")
    runs = paper.runs()
    assert {r.config.depth for r in runs} == {5, 10, 20, 50} and {r.config.activation for r in runs} == {"relu", "tanh"}
    assert {r.config.rule for r in runs} == {"backprop", "sg"} and {r.config.seed for r in runs} == {0, 1, 2}
    assert all(r.config.dataset == "mnist" and r.config.width == 256 and r.config.batch_norm for r in runs)
    assert all(r.config.init == "orthogonal" for r in runs)  # the stabilisers of README "Training deep stacks"
    assert {(r.config.activation, r.config.bn_gamma_init, r.config.bn_beta_init) for r in runs} == {
        ("relu", 1.0, 2.0), ("tanh", 0.5, 0.0)}
    sliced = paper.runs(overrides=Overrides(depths=[50], activations=["relu"], seeds=1))
    assert [r.name for r in sliced] == ["depth_mnist_mlp_d50_relu_backprop_s0.h5", "depth_mnist_mlp_d50_relu_sg_s0.h5"]
    assert {r.name for r in sliced} <= {r.name for r in runs}  # a slice reuses the full preset's runs
    digits = preset("digits").runs()
    rules = {e: {r.config.rule for r in digits if r.experiment == e} for e in ("main", "regression", "linear")}
    assert rules == {"main": {"backprop", "sg", "dni", "cdni", "fa", "dfa"},
                     "regression": {"backprop", "fa", "dfa", "kickback"}, "linear": {"backprop", "sg"}}
    with pytest.raises(UserError, match="unknown preset 'nope'; choose one of async, digits, paper"):
        preset("nope")


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
