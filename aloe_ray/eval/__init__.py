"""The ALOE benchmark: per-turn alignment level (AL), improvement rate (IR), their normalised forms."""
