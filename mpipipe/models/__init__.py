"""mpipipe.models"""
