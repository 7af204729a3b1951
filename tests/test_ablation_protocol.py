"""The ablation protocol: confidence intervals against closed-form numbers, and `fuller ablate` over
paired seeds end to end (layout, reuse, paired initialisation, held-out and modality evaluations)."""
from __future__ import annotations

import filecmp
import json
import math
import sys

import numpy as np
import pytest
import torch

from fuller.cli import main
from fuller.errors import UserInputError
from fuller.train import ablation, study_stats
from fuller.train.study_stats import mean_interval, paired_interval, t_quantile, unpaired_interval

from conftest import SMALL_NETWORK


def t2(p: float) -> float:
    """Student t quantile for 2 degrees of freedom, closed form."""
    return (2 * p - 1) / math.sqrt(2 * p * (1 - p))


@pytest.fixture(params=["scipy", "no scipy"])
def quantile(request, monkeypatch):
    """t_quantile as it runs with scipy and without it (its own incomplete-beta inversion)."""
    if request.param == "scipy":
        pytest.importorskip("scipy.stats")
    else:
        monkeypatch.setitem(sys.modules, "scipy", None)  # `from scipy import stats` raises ImportError
    return request.param


def test_t_quantile_matches_closed_forms(quantile):
    assert t_quantile(0.975, 2) == pytest.approx(4.303, abs=5e-4)
    for p in (0.9, 0.95, 0.975, 0.995):
        assert t_quantile(p, 2) == pytest.approx(t2(p), rel=1e-9)
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)  # Cauchy
        assert t_quantile(1 - p, 2) == pytest.approx(-t2(p), rel=1e-9)
    assert t_quantile(0.975, 1e6) == pytest.approx(1.959964, abs=1e-5)  # the normal's limit
    assert t_quantile(0.975, 4) == pytest.approx(2.776445, abs=1e-6)  # t table


def test_intervals_match_a_hand_computed_example(quantile):
    # values 1, 2, 3: mean 2, sample sd 1, standard error 1/sqrt(3), 2 dof
    iv = mean_interval([1.0, 2.0, 3.0])
    half = t2(0.975) / math.sqrt(3)
    assert (iv.mean, iv.n) == (2.0, 3)
    assert iv.low == pytest.approx(2 - half, rel=1e-12) and iv.high == pytest.approx(2 + half, rel=1e-12)
    assert iv.half_width == pytest.approx(2.4841377, abs=1e-6)
    # paired: differences 0.1, 0.2, 0.1 -> mean 2/15, sd sqrt(1/300), standard error 1/30
    d = paired_interval([0.5, 0.7, 0.6], [0.4, 0.5, 0.5])
    assert d.mean == pytest.approx(2 / 15, rel=1e-12)
    assert d.half_width == pytest.approx(t2(0.975) / 30, rel=1e-9)
    assert not d.excludes(0.0)  # [-0.0101, 0.2768]
    # the 90 % interval of the same values uses the 95 % quantile
    assert mean_interval([1.0, 2.0, 3.0], level=0.9).half_width == pytest.approx(t2(0.95) / math.sqrt(3))


def test_one_value_has_a_mean_and_no_interval():
    iv = mean_interval([0.25])
    assert (iv.mean, iv.low, iv.high, iv.half_width, iv.n) == (0.25, None, None, None, 1)
    assert not iv.excludes(0.0)
    assert paired_interval([0.3], [0.1]).low is None
    # in the tables: "-" where the interval would be, never NaN
    assert ablation._mean_cell({0: 0.25}) == "25.0 ± -"
    assert ablation._delta_cell({0: 0.3}, {0: 0.1}) == "+20.0 [-]"
    assert ablation._mean_cell({}) == "-" and ablation._delta_cell({0: 0.3}, {}) == "-"


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="at least one"):
        mean_interval([])
    with pytest.raises(ValueError, match="one baseline value per value"):
        paired_interval([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        mean_interval([1.0, float("nan")])
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_pairing_narrows_the_interval_when_seeds_are_correlated():
    """Seeds move both variants together (a shared offset per seed, 5 points of spread); the variant
    is 1 point better with little noise of its own. Only the paired interval can tell."""
    rng = np.random.default_rng(0)
    seed_offset = rng.normal(0, 0.05, size=5)
    baseline = 0.30 + seed_offset + rng.normal(0, 0.002, size=5)
    variant = 0.31 + seed_offset + rng.normal(0, 0.002, size=5)
    paired, unpaired = paired_interval(variant, baseline), unpaired_interval(variant, baseline)
    assert paired.mean == pytest.approx(unpaired.mean)  # same point estimate
    assert paired.half_width < unpaired.half_width / 5
    assert paired.excludes(0.0) and not unpaired.excludes(0.0)
    stats = pytest.importorskip("scipy.stats")  # the same intervals as scipy's t-tests
    rel = stats.ttest_rel(variant, baseline).confidence_interval(0.95)
    welch = stats.ttest_ind(variant, baseline, equal_var=False).confidence_interval(0.95)
    assert (paired.low, paired.high) == pytest.approx((rel.low, rel.high), rel=1e-9)
    assert (unpaired.low, unpaired.high) == pytest.approx((welch.low, welch.high), rel=1e-9)


def test_variants_keep_the_paper_order_and_todays_settings(small_cfg):
    names = [v.name for v in ablation.VARIANTS]
    assert names == ["det_only", "map_only", "naive", "inter", "intra", "fuller"]
    by_name = {v.name: v for v in ablation.VARIANTS}
    cfg = ablation.variant_config(small_cfg, by_name["fuller"], steps=7, seed=3)
    assert (cfg.model.tasks, cfg.train.inter, cfg.train.intra) == (["det", "map"], "imtl", True)
    assert (cfg.train.steps, cfg.train.seed) == (7, 3)
    naive = ablation.variant_config(small_cfg, by_name["naive"], 7, 3)
    assert (naive.train.inter, naive.train.intra) == ("sum", False)


def _mtimes(root) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.name in ("checkpoint.pt", "metrics.json")}


@pytest.mark.slow
def test_protocol_end_to_end(small_cfg, synth_root, tmp_path, capsys, monkeypatch):
    """2 variants x 2 seeds x 2 steps, evaluated on val and on a test set (mini_val of the same
    synthetic root, standing in for a held-out one), with the modality ablation."""
    from fuller.train.checkpoint import load_checkpoint
    from fuller.train.trainer import Trainer

    out = tmp_path / "ablation"
    variants = [v for v in ablation.VARIANTS if v.name in ("map_only", "naive")]
    records = ablation.run_ablation(small_cfg, synth_root, out, 2, variants, seeds=[0, 1], test_data=synth_root,
                                    test_split="mini_val", modality_ablation=True, progress=False)

    # layout: OUT/<variant>/seed<s>/, one eval folder per set, the zeroed-modality ones for multi-task only
    for name in ("map_only", "naive"):
        for seed in (0, 1):
            run = out / name / f"seed{seed}"
            assert load_checkpoint(run / "checkpoint.pt")[1]["step"] == 2
            evals = sorted(p.name for p in run.iterdir() if p.name.startswith("eval"))
            expected = ["eval_test", "eval_val"]
            if name == "naive":
                expected = ["eval_test", "eval_test_camera_only", "eval_test_lidar_only", "eval_val"]
            assert evals == expected
            assert all((run / e / "metrics.json").is_file() for e in evals)
            assert not list((run / "eval_val").glob("pictures/*.png"))  # pictures=0
    naive0 = out / "naive" / "seed0"
    full = naive0 / "eval_test" / "results_nusc.json"
    for ablated in ("eval_test_camera_only", "eval_test_lidar_only"):  # a modality was zeroed: other boxes
        assert not filecmp.cmp(naive0 / ablated / "results_nusc.json", full, shallow=False), ablated

    # records: variant, seed, set; deltas against naive of the same seed and set
    assert records == json.loads((out / "ablation.json").read_text())
    assert [(r["variant"], r["seed"], r["set"]) for r in records] == [
        (v, s, e) for v in ("map_only", "naive") for s in (0, 1) for e in ("val", "test")]
    by_key = {(r["variant"], r["seed"], r["set"]): r for r in records}
    for seed in (0, 1):
        for set_name in ("val", "test"):
            m, n = by_key["map_only", seed, set_name], by_key["naive", seed, set_name]
            assert m["mAP"] is None and m["mIoU"] is not None and n["mAP"] is not None
            assert n["delta_mAP"] == 0 and m["delta_mAP"] is None
            assert math.isclose(m["delta_mIoU"], m["mIoU"] - n["mIoU"])
            assert n["num_samples"] == 6 and n["steps"] == 2
            assert ("lidar_only" in n) == (set_name == "test") and "lidar_only" not in m
    test0 = by_key["naive", 0, "test"]
    assert set(test0["camera_only"]) == {"mAP", "NDS", "mIoU"} and test0["lidar_only"]["mIoU"] is not None

    # paired seeds: the configs carry the seed, and the step-0 trunk of a seed is the same in both variants
    cfgs = {(name, seed): load_checkpoint(out / name / f"seed{seed}" / "checkpoint.pt")[0]
            for name in ("map_only", "naive") for seed in (0, 1)}
    assert all(cfg.train.seed == seed for (_, seed), cfg in cfgs.items())
    assert cfgs["map_only", 0].model.tasks == ["map"] and cfgs["naive", 0].model.tasks == ["det", "map"]

    def initial_fuser(key):
        return next(Trainer.create(cfgs[key], torch.device("cpu")).model.fuser.parameters()).detach().clone()

    assert initial_fuser(("map_only", 0)).equal(initial_fuser(("naive", 0)))
    assert initial_fuser(("map_only", 1)).equal(initial_fuser(("naive", 1)))
    assert not initial_fuser(("naive", 0)).equal(initial_fuser(("naive", 1)))

    # the report: a table per set in the paper's shape, the modality ablation, no NaN
    md = (out / "ablation.md").read_text()
    for text in ("Seeds 0, 1 (n = 2", "2 training steps per run", "## val: split `mini_val`", "6 samples",
                 "## test: split `mini_val`", "| variant | mAP | mIoU | ΔmAP vs naive [95 % CI] | ΔmIoU vs naive [95 % CI] |",
                 "| Multi-task, naive sum | ", "(reference)", "## Modality ablation, test",
                 "| variant | mAP full | mAP LiDAR only | mAP camera only | mIoU full | mIoU LiDAR only | "
                 "mIoU camera only |"):
        assert text in md, text
    map_rows = [line for line in md.splitlines() if line.startswith("| Map only |")]
    assert len(map_rows) == 2  # val and test; single-task rows are not in the modality table
    cells = [c.strip() for c in map_rows[0].strip("|").split("|")]
    assert cells[1] == "-" and cells[3] == "-" and " ± " in cells[2] and cells[4].count("[") == 1
    assert "nan" not in md.lower()
    capsys.readouterr()

    # rerun through the command line: everything is reused, nothing trains or evaluates
    before = _mtimes(out)

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run or evaluation was redone")

    monkeypatch.setattr(ablation, "train", refuse)
    monkeypatch.setattr(ablation, "evaluate_model", refuse)
    args = ["ablate", "--data", synth_root, "--steps", "2", "--out", str(out), "--only", "map_only", "naive",
            "--seeds", "2", "--test-data", synth_root, "--test-split", "mini_val", "--modality-ablation",
            "--set", *SMALL_NETWORK]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "[1/4] Map only, seed 0: model.tasks=[map], train.inter=sum, train.intra=False (reused" in printed
    assert "[4/4] Multi-task, naive sum, seed 1:" in printed and "(training" not in printed
    assert "## Modality ablation" in printed
    assert _mtimes(out) == before
    assert json.loads((out / "ablation.json").read_text()) == records

    # a run of a seed folder trained otherwise is refused, not reused
    changed = [ablation.Variant("naive", "naive, changed", {**variants[1].overrides, "train.inter": "imtl"})]
    with pytest.raises(UserInputError, match="train.inter='sum'"):
        ablation.run_ablation(small_cfg, synth_root, out, 2, changed, seeds=[0], progress=False)


def test_cli_checks_the_seed_flags(tmp_path, capsys):
    base = ["ablate", "--data", str(tmp_path / "data"), "--steps", "1", "--out", str(tmp_path / "a")]
    assert main([*base, "--seeds", "0"]) == 2
    assert main([*base, "--seed-list", "1", "1"]) == 2
    assert main([*base, "--only", "nope"]) == 2
    assert "unknown variants ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--seeds", "2", "--seed-list", "3"])
    assert not (tmp_path / "a").exists()


def test_a_seed_gives_every_variant_the_same_initial_trunk(small_cfg):
    """What pairing rests on: with train.seed = s, the trunk (encoders, fuser, decoder) every
    variant starts from is the same, whatever its tasks and calibration; another seed differs."""
    from fuller.train.trainer import Trainer

    def initial_trunk(variant, seed):
        cfg = ablation.variant_config(small_cfg, variant, steps=2, seed=seed)
        state = Trainer.create(cfg, torch.device("cpu")).model.state_dict()
        return {k: v for k, v in state.items() if not k.startswith("heads.")}

    reference = initial_trunk(ablation.VARIANTS[0], 0)
    for variant in ablation.VARIANTS[1:]:
        trunk = initial_trunk(variant, 0)
        assert trunk.keys() == reference.keys()
        assert all(trunk[k].equal(reference[k]) for k in reference), variant.name
    other = initial_trunk(ablation.VARIANTS[0], 1)
    assert not all(other[k].equal(reference[k]) for k in reference)


def test_a_study_folder_keeps_the_world_it_was_written_with(tmp_path, monkeypatch):
    """`fuller study` records each set's options; a rerun asking for another world in the same folder
    is refused naming the option, and the same world is reused without writing anything."""
    from fuller.train import study

    written = []

    def fake_make(root, options, progress=True):  # what ensure_dataset needs of a written set
        (root / options.version).mkdir(parents=True)
        (root / options.version / "scene.json").write_text("[]")
        written.append(options)

    monkeypatch.setattr(study, "make_dataset", fake_make)
    options = study.TEST_DATA
    study.ensure_dataset(tmp_path, options, progress=False)
    study.ensure_dataset(tmp_path, options, progress=False)
    assert written == [options]
    record = json.loads((tmp_path / study.WORLD_RECORD).read_text())
    assert record["kerb_height"] == options.kerb_height and record["unmapped_yards"] is False
    blind = study.replace(options, **study.LIDAR_BLIND_MAP)
    with pytest.raises(UserInputError) as exc:
        study.ensure_dataset(tmp_path, blind, progress=False)
    assert all(w in str(exc.value) for w in ("kerb_height", "unmapped_yards", study.WORLD_RECORD, "--out"))
    assert blind.lidar_ground_contrast == 0.0 and blind.kerb_height == 0.0 and blind.unmapped_yards


def test_camera_pretraining_starts_every_run_from_its_backbone(small_cfg, synth_root, tmp_path, monkeypatch):
    """`fuller study --pretrain-camera`: the pretraining's image backbone, as the checkpoint holds it,
    is what a run with `model.backbone_weights` starts from; it is reused without training, a
    pretraining of another length is refused, and a run started from other weights is not reused."""
    from fuller.config import updated_config
    from fuller.train import study
    from fuller.train.checkpoint import load_checkpoint
    from fuller.train.trainer import Trainer

    out = tmp_path / "pretrain"
    weights = study.pretrain_camera_backbone(small_cfg, synth_root, out, 2, progress=False)
    run_cfg, payload = load_checkpoint(out / "checkpoint.pt")
    assert (run_cfg.model.modalities, run_cfg.model.tasks, run_cfg.data.train_split) == (["camera"], ["map"], "all")
    trained = {k.removeprefix("camera.backbone."): v for k, v in payload["model"].items()
               if k.startswith("camera.backbone.")}
    fresh = Trainer.create(small_cfg, torch.device("cpu")).model.camera.backbone.state_dict()
    assert not all(trained[k].equal(fresh[k]) for k in fresh)  # it trained
    started = updated_config(small_cfg, {"model.backbone_weights": str(weights)})
    backbone = Trainer.create(started, torch.device("cpu")).model.camera.backbone.state_dict()
    assert backbone.keys() == trained.keys() and all(backbone[k].equal(trained[k]) for k in trained)

    def refuse(*args, **kwargs):
        raise AssertionError("a finished pretraining was trained again")

    monkeypatch.setattr(study, "train", refuse)
    assert study.pretrain_camera_backbone(small_cfg, synth_root, out, 2, progress=False) == weights
    with pytest.raises(UserInputError, match="2 steps"):
        study.pretrain_camera_backbone(small_cfg, synth_root, out, 3, progress=False)
    naive = ablation.VARIANTS[2]
    have, want = (ablation.variant_config(cfg, naive, steps=2) for cfg in (small_cfg, started))
    with pytest.raises(UserInputError, match="model.backbone_weights"):
        ablation.check_run(out, have, want, naive)

def test_diagnostics_table_reads_each_runs_last_steps(tmp_path):
    """Per run the median over the last `window` steps (earlier steps and missing values ignored), per
    variant the mean over seeds; a reading no run logs is "-", a variant without runs has no row."""
    from fuller.train.study_diagnostics import READINGS, diagnostics_table, run_readings

    variant, absent = ablation.Variant("v", "Some reading", {}), ablation.Variant("w", "Not run", {})

    def write(seed: int, late: list[float]) -> None:
        run = ablation.run_dir(tmp_path, variant, seed)
        run.mkdir(parents=True)
        rows = [{"step": 0, "cos/det-map": 100.0, "grad_norm/det": 100.0}, {"lr": 1e-3}]
        rows += [{"step": 150 + k, "cos/det-map": v, "grad_norm/det": None if k else 7.0} for k, v in enumerate(late)]
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    write(0, [3.0, 1.0, 1.5])  # median 1.5, mean 1.83 (step 0 lies outside the last 100 steps before 152)
    write(1, [4.0, 9.0, 0.0, 4.5])  # median 4.25, mean 4.375
    first = run_readings(ablation.run_dir(tmp_path, variant, 0) / "metrics.jsonl")
    assert first["cos/det-map"] == 1.5 and first["grad_norm/det"] == 7.0 and math.isnan(first["grad_norm/map"])
    table = diagnostics_table(tmp_path, [variant, absent], [0, 1])
    row = next(line for line in table.splitlines() if line.startswith("| Some reading (n = 2) |"))
    cells = dict(zip([name for _, name in READINGS], [c.strip() for c in row.split("|")[2:-1]]))
    assert cells["cos at z"] == "2.9" and cells["‖g_det‖ at z"] == "7" and cells["‖g_map‖ at z"] == "-"
    assert "Not run" not in table


def test_every_study_variant_names_real_config_keys_and_values():
    """Each row of `fuller study` is a valid config on the study network (a misspelt key or a value
    out of range would otherwise surface an hour into the study)."""
    from fuller.config import load_config
    from fuller.train import study

    base = load_config(study.STUDY_CONFIG)
    for variant in (*study.ABLATION, *study.CONTROLS, *study.SENSORS, study.PRETRAIN):
        cfg = ablation.variant_config(base, variant, 10)
        for key, value in variant.overrides.items():
            section, name = key.split(".")
            assert getattr(getattr(cfg, section), name) == value, (variant.name, key)
