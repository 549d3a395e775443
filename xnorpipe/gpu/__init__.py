"""GPU side of xnorpipe: launch planning for the CUDA XnorConv2d kernels (plugins/cuda),
device queries without heavy dependencies, and TensorRT engine building. The Triton kernels of
every xnorpipe op: `triton_kernels` (wrappers, tile table; kernels in `triton_jit`),
`triton_aot` (PTX/cubin per GPU target for TensorRT), `kernel_cases` (their exactness cases).

Nothing here imports torch, CuPy or TensorRT at module import time.
"""
