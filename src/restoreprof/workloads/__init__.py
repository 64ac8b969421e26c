"""Built-in workloads: processes that hold known data, for demo, tests, benchmarks and tuning."""
