"""Descriptor families (wACSF, GMP, EAD) and the registry of the nine label sets."""
