"""Where a run executes: pmap helpers (`parallel`), several hosts (`distributed`) and the host
allocator on CPU-only machines (`host_memory`)."""
