"""Benchmarks that measure and report (`mpipipe bench`); none of them is a test.

    emulated      the real engine and real messages on an emulated accelerator, against the
                  schedule simulator (emulated_device.py, emulated_model.py, emulated.py)
    cpu           real compute on CPU: mpipipe against PyTorch's pipelining (cpu_pipeline.py,
                  cpu_settings.py, torch_pipeline.py, torch_gpt.py)
    layers        one process: layers against PyTorch eager and NumPy's matmul (layers.py,
                  gpt_step.py)
    gpu           one GPU: CuPy against PyTorch eager, fused kernels (gpu.py)

driver.py runs them (the MPI parts under launcher.py's mpiexec) and writes Markdown
(tables.py, report.py) and JSON. soak.py trains long and checks that nothing grows;
checkpoint_io.py times checkpoint writes. Optional packages (PyTorch, CuPy) are looked
for with optional.py.
"""
