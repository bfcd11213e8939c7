"""Pooling-schedule presets, installed as the package data of `tpdeploy.presets`."""
