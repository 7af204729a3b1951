"""Training: data, model, losses, gradient calibration, evaluation (see docs/DESIGN in ../shared)."""
