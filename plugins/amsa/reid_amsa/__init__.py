"""reid-amsa: MUVA's multi-grained vision-language alignment (CLIP part tokens, adaptively masked attention, multi-grained prompts) for reid-core."""
