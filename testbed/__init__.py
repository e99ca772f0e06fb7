"""The world the mirror is run in by its tests and its benchmarks, and nothing the mirror itself needs.

- `testbed.hubemu`: the Hub emulator (hub and signed-CDN origins in one thread), a second
  implementation of the Hub that is kept as strict as the real one;
- `testbed.mirror_server`: the mirror under test, in a thread of this process (`MirrorThread`, the one
  place that looks inside a running app) or as a real `python -m mirror serve` process (`MirrorProcess`);
- `testbed.s3server`: SeaweedFS, a real S3 server on free 127.0.0.1 ports.

Why a top-level package of its own: `tests/` (pytest) and `bench/` (`python -m bench`) both need these,
and the benchmarks must not import the test suite. It is not under `mirror/`, so the production wheel
(`[tool.setuptools.packages.find] include = ["mirror*"]`) never ships a fake Hub; it is run from the
repository root (scripts/test.sh, scripts/bench.sh), where `python -m pytest` and `python -m bench`
import it as they import `mirror`, without path tricks. What only tests use lives in `tests/support/`.
"""
