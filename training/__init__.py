"""streamwatch offline side: data, the PyTorch forecaster, training, calibration, export."""
