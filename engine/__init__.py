"""The runtime: Engine.load(artefact), update_calibration(...), infer(images, points); no torch needed."""
