"""Encoders: BERT text (in-graph tokenisation), item ids, categorical features."""
