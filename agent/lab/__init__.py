"""Real local clusters for ``dedgeai demo``, the benchmarks in ``tools/`` and the tests."""
