"""The I/O shell around forescale's pure decisions: sources, actuators, loop, API, CLI.

Only this package imports kubernetes, apscheduler, fastapi and prometheus_api_client.
"""
