"""Pure batch functions over pandas / Arrow / numpy (no Spark import), and per-worker model loading."""
