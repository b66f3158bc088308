"""Benchmarks: calibrated full-size models, the dense PyTorch baseline, and the scatter roofline."""
