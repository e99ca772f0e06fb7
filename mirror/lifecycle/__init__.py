"""Running the cache for months: eviction, garbage collection, scrubbing, usage, offline bundles."""
