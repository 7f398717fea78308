"""mpipipe.checkpoint"""
