"""Models (plain `nn.Module`s built from a catalogue entry) and the LightningModule that trains them."""
