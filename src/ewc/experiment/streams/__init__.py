"""Task streams: permuted, split and rotated image benchmarks in the three scenarios."""
