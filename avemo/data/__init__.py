"""Data: corpora (raw sessions on disk), and later the preparation cache and the Grain pipeline.

Flow: raw files (``avemo.data.corpora``) → front ends → preparation cache → pipeline → model.
"""
