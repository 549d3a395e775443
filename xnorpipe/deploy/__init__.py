"""Deployment: fold a trained model into the deploy IR and emit it (ONNX, PyTorch)."""
