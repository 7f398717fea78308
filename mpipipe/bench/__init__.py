"""mpipipe.bench"""
