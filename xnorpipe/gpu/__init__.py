"""GPU side of xnorpipe: launch planning for the CUDA XnorConv2d kernels (plugins/cuda),
device queries without heavy dependencies, and TensorRT engine building. The Triton kernels of
every xnorpipe op: `triton_kernels` (wrappers, tile table; kernels in `triton_jit`),
`triton_aot` (PTX/cubin per GPU target for TensorRT), `kernel_cases` (their exactness cases).

Importing this package imports neither torch, CuPy nor TensorRT; `onnx_runner` and
`triton_kernels` import torch, `triton_jit` Triton, TensorRT is imported only inside calls.
"""
