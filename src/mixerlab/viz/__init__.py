"""`mixerlab viz`: what a Mixer learned, as the paper's Figures 5-7 show it, for any checkpoint."""
