"""What runs under MPI: process grid, parameter store, communication, watchdog, trace."""
