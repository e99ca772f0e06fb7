"""Helpers only the tests use: clients, mirrors configured for tests, download tools, storage checks.

What the benchmarks use as well (the Hub emulator, the mirror runners, the S3 server) is in `testbed/`.
"""
