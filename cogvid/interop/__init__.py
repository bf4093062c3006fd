"""Weights interop between SAT and Diffusers layouts."""
