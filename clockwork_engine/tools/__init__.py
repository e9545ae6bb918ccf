"""Tools over the engine: the command line, benchmarks' helpers, FLOP counting, profiling,
ahead-of-time compilation and the package's import graph."""
