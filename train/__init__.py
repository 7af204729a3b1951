"""Training, on the torch-free core: the torch dataset over the nuScenes reader, model, losses,
gradient calibration, trainer and checkpoints, batched prediction for `fuller eval`, ablation and
benchmark (docs/training.md, docs/model.md). Scoring is the core's (`fuller.evaluation`)."""
