"""End-to-end SPICE console tests for Kerbside, as a tempest plugin.

The libraries under this package (digest, sextant, ryll, providers, lane)
do not import tempest and can be used on their own.
"""
