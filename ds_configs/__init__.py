"""DeepSpeed JSONs shipped with Odyssey, found by name (deepspeed.config: zero3) from the installed package."""
