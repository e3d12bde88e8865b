"""One REST client for Kerbside's API and the proxy's /metrics.

See kerbside_api.client. Imports only common, so the lane, the scenario,
the promise tests and the console can all use it.
"""
