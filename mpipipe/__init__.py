"""mpipipe: MPI-native pipeline-parallel training with hand-written layers."""

from mpipipe.threads import limit_blas_threads

# Several ranks per node must not each start a BLAS pool as large as the node;
# this has to happen before NumPy is first imported.
limit_blas_threads()

__version__ = "0.1.0"
