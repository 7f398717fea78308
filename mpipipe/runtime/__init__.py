"""mpipipe.runtime"""
