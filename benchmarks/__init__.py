"""fastdrop's benchmarks against torch's native ops (run: python -m fastdrop.bench)."""
