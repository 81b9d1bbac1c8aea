"""The benchmarks that write reports/*.md, each run from the repository root as
``.venv/bin/python -m tests.benchmarks.<name>``; tests/test_benchmark_<name>.py keeps each from rotting."""
