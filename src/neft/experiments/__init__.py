"""Harnesses built on the library's public API: compare (method grids), bench (speed and
memory), demo. The library (core, select, data, train, evaluate, analyze) never imports
them."""
