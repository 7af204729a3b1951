"""`fuller study`: the calibration study of docs/results.md, from nothing to its tables in one command.

It writes two synthetic sets of the study world (``fuller make-data --study-world``): one for
training and validation (the devkit's train and val scenes of one seed's towns) and a test set of
new towns from another seed, read once at the end of each run. Then three ablations, each over
paired seeds (every variant gets the same initialisation and data order for a seed):

* ``ablation``: the paper's rows with the study's readings of FULLER;
* ``sensors`` (one seed): single-task, single-modality models, the check that the world holds a
  modality bias worth calibrating (LiDAR detects, cameras map), beside the map prior (the map a
  model without sensors draws, `map_prior`) that each sensor's map is measured from;
* with ``--controls``, the readings the study measures itself against, added to the ablation, and
  the per-task AdamW moments (``train.per_task_adam``) in all of the trunk, in both branches,
  in the camera branch, and in the camera branch and fusion.

The ablation's table ends with the gradient diagnostics of its variants (`study_diagnostics`).

``--pretrain-camera STEPS`` first trains a camera-only map model for that many steps on a third set,
of towns from a third seed that neither training nor test sees, and starts every run's image backbone
from its weights (`pretrain_camera_backbone`): the study's counterpart of the pretrained image
backbone every camera BEV model starts from (BEVFusion's comes from nuImages). On the LiDAR-blind
world the cameras map better than the LiDAR from about 3000 steps from scratch, in 350 from these weights.

``--sensors-only`` stops after the sensor check: the half hour that tells whether a world holds the
bias before two hours go into the ablation. ``--lidar-blind-map`` writes the study world with the
LiDAR blind to the map (`LIDAR_BLIND_MAP`: no paint contrast, walkways flush with the road, rows of
parked cars on unmapped yards as well as in car parks).

Everything is reused when present, so an interrupted study resumes where it stopped; each data set
records the options it was written with (`WORLD_RECORD`), and a rerun that asks for another world
in the same folder is refused.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import torch

from fuller.config import FullerConfig, load_config, updated_config
from fuller.data import NuScenesDataset
from fuller.errors import UserInputError
from fuller.synth.generate import SynthOptions, make_dataset

from .ablation import BOTH, Variant, check_run, run_ablation, variant_config
from .checkpoint import load_checkpoint
from .map_prior import class_frequency, score_prior, split_masks
from .study_diagnostics import diagnostics_table
from .trainer import CHECKPOINT, train

STUDY_CONFIG = "study"
# Train/val: 40 scenes of 8 keyframes (34 train, 6 val scenes); test: 16 scenes of 6 in new towns.
TRAIN_DATA = SynthOptions(world="study", version="v1.0-trainval", scenes=40, samples_per_scene=8, seed=0,
                          image_scale=0.1, sweeps_per_sample=1)
TEST_DATA = replace(TRAIN_DATA, scenes=16, samples_per_scene=6, seed=1)
PRETRAIN_DATA = replace(TRAIN_DATA, scenes=20, seed=2)  # the camera pretraining's towns: in neither set above
LIDAR_BLIND_MAP = {"lidar_ground_contrast": 0.0, "kerb_height": 0.0, "unmapped_yards": True}
WORLD_RECORD = "synth_options.json"  # in each data root: the SynthOptions it was written with

_PLAIN = {"model.tasks": BOTH, "train.inter": "sum", "train.intra": False, "train.intra_mode": "norm"}
_PER_TASK = {"train.intra": True, "train.intra_mode": "per_task"}
ABLATION = (
    Variant("det_only", "Detection only", {**_PLAIN, "model.tasks": ["det"]}),
    Variant("map_only", "Map only", {**_PLAIN, "model.tasks": ["map"]}),
    Variant("naive", "Multi-task, naive sum", _PLAIN),
    Variant("inter", "+ inter: bounded (eps 0.1)", {**_PLAIN, "train.inter": "bounded"}),
    Variant("intra", "+ intra: per task", {**_PLAIN, **_PER_TASK}),
    Variant("fuller", "FULLER (bounded + per-task intra)", {**_PLAIN, "train.inter": "bounded", **_PER_TASK}),
)
CONTROLS = (
    Variant("imtl", "+ inter: IMTL-G", {**_PLAIN, "train.inter": "imtl"}),
    Variant("imtl_rescaled", "+ inter: IMTL-G at the sum's norm", {**_PLAIN, "train.inter": "imtl_rescaled"}),
    Variant("intra_norm", "+ intra: branch norms", {**_PLAIN, "train.intra": True}),
    Variant("task_adam", "+ per-task AdamW moments", {**_PLAIN, "train.per_task_adam": True}),
    Variant("task_adam_branches", "+ per-task AdamW moments, both branches",
            {**_PLAIN, "train.per_task_adam": True, "train.per_task_adam_parts": ["camera", "lidar"]}),
    Variant("task_adam_camera", "+ per-task AdamW moments, camera branch",
            {**_PLAIN, "train.per_task_adam": True, "train.per_task_adam_parts": ["camera"]}),
    Variant("task_adam_camera_fusion", "+ per-task AdamW moments, camera branch and fusion",
            {**_PLAIN, "train.per_task_adam": True, "train.per_task_adam_parts": ["camera", "fusion"]}),
)
SENSORS = (
    Variant("det_lidar", "Detection, LiDAR only", {**_PLAIN, "model.tasks": ["det"], "model.modalities": ["lidar"]}),
    Variant("det_camera", "Detection, camera only", {**_PLAIN, "model.tasks": ["det"], "model.modalities": ["camera"]}),
    Variant("map_lidar", "Map, LiDAR only", {**_PLAIN, "model.tasks": ["map"], "model.modalities": ["lidar"]}),
    Variant("map_camera", "Map, camera only", {**_PLAIN, "model.tasks": ["map"], "model.modalities": ["camera"]}),
)

PRETRAIN = Variant("camera_map", "Camera pretraining: map, camera only",
                   {**_PLAIN, "model.tasks": ["map"], "model.modalities": ["camera"], "data.train_split": "all",
                    "train.val_every": 0})  # no held-out split in its set: it trains on every scene
BACKBONE_WEIGHTS = "backbone.pth"  # in OUT/pretrain: the image backbone every study run starts from


def ensure_dataset(root: Path, options: SynthOptions, progress: bool = True) -> Path:
    """Write the set unless ``root`` already holds it (its release folder with a scene table), then
    record its options; a set recorded with other options is refused (a set without a record, from
    before records were kept, is reused as it is)."""
    wanted = asdict(options)
    record = root / WORLD_RECORD
    if not (root / options.version / "scene.json").is_file():
        print(f"writing {options.scenes} scenes x {options.samples_per_scene} keyframes to {root} "
              f"(study world, seed {options.seed})", flush=True)
        make_dataset(root, options, progress=progress)
        record.write_text(json.dumps(wanted, indent=2) + "\n")
    elif record.is_file():
        found = json.loads(record.read_text())
        differ = {k: (found.get(k), v) for k, v in wanted.items() if found.get(k) != v}
        if differ:
            raise UserInputError(f"{record}: this set was written with other options (found, wanted): {differ}; "
                                 "use another --out")
    return root


def run_study(out: str | Path, seeds: int = 3, steps: int = 350, controls: bool = False,
              overrides: list[str] | None = None, progress: bool = True, lidar_blind_map: bool = False,
              sensors_only: bool = False, pretrain_camera: int = 0) -> list[Path]:
    """Data, the camera pretraining (with ``pretrain_camera`` steps), then the ablation, the sensor
    check (one seed) and optionally the controls (``seeds`` each), or with ``sensors_only`` the
    sensor check alone; returns the ablation.md files written."""
    out = Path(out)
    world = LIDAR_BLIND_MAP if lidar_blind_map else {}
    train_root = ensure_dataset(out / "data", replace(TRAIN_DATA, **world), progress)
    test_root = ensure_dataset(out / "test_data", replace(TEST_DATA, **world), progress)
    cfg = load_config(STUDY_CONFIG, overrides or [])
    if pretrain_camera:
        pretrain_root = ensure_dataset(out / "pretrain_data", replace(PRETRAIN_DATA, **world), progress)
        weights = pretrain_camera_backbone(cfg, pretrain_root, out / "pretrain", pretrain_camera, progress)
        cfg = updated_config(cfg, {"model.backbone_weights": str(weights.resolve())})
    seed_list = list(range(seeds))
    studies = [("sensors", SENSORS, [0])] if sensors_only else [("ablation", ABLATION, seed_list),
                                                                ("sensors", SENSORS, [0])]
    if controls and not sensors_only:  # into the ablation's folder: its naive runs are reused, its table gains rows
        studies.append(("ablation", (*ABLATION, *CONTROLS), seed_list))
    written = []
    for name, variants, seed_list in studies:
        run_ablation(cfg, train_root, out / name, steps, variants, seed_list, test_data=test_root,
                     test_split="all", test_version=TEST_DATA.version, modality_ablation=name != "sensors",
                     progress=progress)
        if name == "sensors":
            write_map_prior(cfg, train_root, test_root, out / name, progress)
        else:
            with open(out / name / "ablation.md", "a") as f:
                f.write(diagnostics_table(out / name, variants, seed_list))
        if out / name / "ablation.md" not in written:
            written.append(out / name / "ablation.md")
    return written


def pretrain_camera_backbone(cfg: FullerConfig, data_root: Path, out: Path, steps: int,
                             progress: bool = True) -> Path:
    """Train the camera-only map model (`PRETRAIN`, seed 0) for ``steps`` on every scene of
    ``data_root`` into ``out`` and write its image backbone as a torchvision-keyed state dict,
    ``out/backbone.pth``, which ``model.backbone_weights`` loads; returns that path. A finished
    pretraining is reused, an interrupted one resumed, one trained otherwise refused."""
    run_cfg = variant_config(cfg, PRETRAIN, steps)
    ckpt, weights = out / CHECKPOINT, out / BACKBONE_WEIGHTS
    if ckpt.is_file():
        have, payload = load_checkpoint(ckpt, map_location="cpu")
        check_run(out, have, run_cfg, PRETRAIN)
        if have.train.steps != steps:
            raise UserInputError(f"{out}: holds a camera pretraining of {have.train.steps} steps, but "
                                 f"{steps} were asked for; remove it or choose another --out")
        done = payload["step"] >= steps
    else:
        done = False
    if not done:
        print(f"camera pretraining: map, camera only, {steps} steps on {data_root} ({out})", flush=True)
        train(run_cfg, data_root, out, resume=ckpt.is_file(), progress=progress)
        weights.unlink(missing_ok=True)
    if not weights.is_file():
        _, payload = load_checkpoint(ckpt, map_location="cpu")
        prefix = "camera.backbone."
        state = {k[len(prefix):]: v for k, v in payload["model"].items() if k.startswith(prefix)}
        tmp = weights.with_name(weights.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, weights)
    return weights


def write_map_prior(cfg: FullerConfig, train_root: Path, test_root: Path, out: Path, progress: bool = True) -> dict:
    """The map prior of the training split scored on val and test: OUT/map_prior.json, and a section
    of OUT/ablation.md (the sensor table's floor for the map)."""
    classes = cfg.geometry.map_classes
    prior = class_frequency(split_masks(NuScenesDataset(cfg, train_root, cfg.data.train_split), progress))
    test_cfg = updated_config(cfg, {"data.version": TEST_DATA.version})
    sets = {"val": NuScenesDataset(cfg, train_root, cfg.data.val_split),
            "test": NuScenesDataset(test_cfg, test_root, "all")}
    scores = {name: score_prior(prior, split_masks(ds, progress), classes) for name, ds in sets.items()}
    (out / "map_prior.json").write_text(json.dumps(scores, indent=2) + "\n")
    lines = ["", "## Map prior (no sensor)", "",
             "Each cell's class frequency over the training split, predicted for every sample: what a model "
             "without sensors draws. mIoU and per-class IoU (best over the thresholds), in %.", "",
             "| set | mIoU | " + " | ".join(classes) + " |", "|---|---:|" + "---:|" * len(classes)]
    for name, score in scores.items():
        cells = [f"{100 * score['iou_max'][c]:.1f}" if score["iou_max"][c] is not None else "-" for c in classes]
        lines.append(f"| {name} | {100 * score['mean_iou_max']:.1f} | " + " | ".join(cells) + " |")
    with open(out / "ablation.md", "a") as f:
        f.write("\n".join(lines) + "\n")
    return scores
