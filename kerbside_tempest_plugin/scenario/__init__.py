"""The Sextant scenario as a library (no tempest): capture the digest
stream, walk the guest through its beats, cross-check both oracles, and
leave artifacts and a report. The tempest classes in
kerbside_tempest_plugin/tests/scenario/ are thin wrappers around it.
"""
