"""`fuller study`: the calibration study of docs/results.md, from nothing to its tables in one command.

It writes two synthetic sets of the study world (``fuller make-data --study-world``): one for
training and validation (the devkit's train and val scenes of one seed's towns) and a test set of
new towns from another seed, read once at the end of each run. Then three ablations, each over
paired seeds (every variant gets the same initialisation and data order for a seed):

* ``ablation``: the paper's rows with the study's readings of FULLER;
* ``sensors`` (one seed): single-task, single-modality models, the check that the world holds a
  modality bias worth calibrating (LiDAR detects, cameras map);
* with ``--controls``, the readings the study measures itself against, added to the ablation.

Everything is reused when present, so an interrupted study resumes where it stopped.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fuller.config import load_config
from fuller.synth.generate import SynthOptions, make_dataset

from .ablation import BOTH, Variant, run_ablation

STUDY_CONFIG = "study"
# Train/val: 40 scenes of 8 keyframes (34 train, 6 val scenes); test: 16 scenes of 6 in new towns.
TRAIN_DATA = SynthOptions(world="study", version="v1.0-trainval", scenes=40, samples_per_scene=8, seed=0,
                          image_scale=0.1, sweeps_per_sample=1)
TEST_DATA = replace(TRAIN_DATA, scenes=16, samples_per_scene=6, seed=1)

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
)
SENSORS = (
    Variant("det_lidar", "Detection, LiDAR only", {**_PLAIN, "model.tasks": ["det"], "model.modalities": ["lidar"]}),
    Variant("det_camera", "Detection, camera only", {**_PLAIN, "model.tasks": ["det"], "model.modalities": ["camera"]}),
    Variant("map_lidar", "Map, LiDAR only", {**_PLAIN, "model.tasks": ["map"], "model.modalities": ["lidar"]}),
    Variant("map_camera", "Map, camera only", {**_PLAIN, "model.tasks": ["map"], "model.modalities": ["camera"]}),
)


def ensure_dataset(root: Path, options: SynthOptions, progress: bool = True) -> Path:
    """Write the set unless ``root`` already holds it (its release folder with a scene table)."""
    if not (root / options.version / "scene.json").is_file():
        print(f"writing {options.scenes} scenes x {options.samples_per_scene} keyframes to {root} "
              f"(study world, seed {options.seed})", flush=True)
        make_dataset(root, options, progress=progress)
    return root


def run_study(out: str | Path, seeds: int = 3, steps: int = 350, controls: bool = False,
              overrides: list[str] | None = None, progress: bool = True) -> list[Path]:
    """Data, then the sensor check (one seed), the ablation and optionally the controls (``seeds``
    each); returns the ablation.md files written."""
    out = Path(out)
    train_root = ensure_dataset(out / "data", TRAIN_DATA, progress)
    test_root = ensure_dataset(out / "test_data", TEST_DATA, progress)
    cfg = load_config(STUDY_CONFIG, overrides or [])
    seed_list = list(range(seeds))
    studies = [("ablation", ABLATION, seed_list), ("sensors", SENSORS, [0])]
    if controls:  # into the ablation's folder: its naive runs are reused, the table gains the rows
        studies.append(("ablation", (*ABLATION, *CONTROLS), seed_list))
    written = []
    for name, variants, seed_list in studies:
        run_ablation(cfg, train_root, out / name, steps, variants, seed_list, test_data=test_root,
                     test_split="all", test_version=TEST_DATA.version, modality_ablation=name != "sensors",
                     progress=progress)
        if out / name / "ablation.md" not in written:
            written.append(out / name / "ablation.md")
    return written
