"""streamwatch server: per-stream recurrent state, micro-batched ONNX stepping, scoring, alerts."""
