"""Reports: metric writers (TensorBoard + log + JSONL), tables and plots."""
