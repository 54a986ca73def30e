"""Test helpers: a synthetic analytic ONNX model for the sparse engine and analytic CT phantoms."""
