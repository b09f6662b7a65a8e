"""Encoders: resolve, export to ONNX, quantize, align, and run them."""
