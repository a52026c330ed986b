"""Judges: score every assistant turn of a dialogue for harmlessness and helpfulness, on [0, 1]."""
