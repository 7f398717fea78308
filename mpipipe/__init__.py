"""mpipipe: MPI-native pipeline-parallel training with hand-written layers."""

__version__ = "0.1.0"
