"""What exists and with which settings: methods, presets, protocols, data sets, class lists, backbones. No torch."""

VERSION = "0.1.0"

