"""GPU side of xnorpipe: launch planning for the CUDA XnorConv2d kernels (plugins/cuda),
device queries without heavy dependencies, and TensorRT engine building.

Nothing here imports torch, CuPy or TensorRT at module import time.
"""
