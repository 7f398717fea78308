"""mpipipe.data"""
