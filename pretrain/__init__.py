"""Pretraining: data (shards, synthetic world, pipeline), masking inputs, and the DeepSpeed train loop."""
