"""The base layer: retrieval metrics, exact search, checksummed caches and atomic file I/O.

Layers import downward only: ``retrieval`` → ``datamodules`` → ``lightning_modules`` → ``callbacks`` →
``experiments`` (tests/test_layers.py checks it). Nothing here imports the project's other packages.
"""
