"""Attention-map reuse across steps: the attention processors that cache and reuse maps, and
the search for which layers and steps to reuse."""
