"""Spreading work over devices and hosts: the distribution and the weights' layout."""
