"""CUDA C sources of the fused GPU kernels; they ship inside the package as mpipipe.cuda_kernels."""
