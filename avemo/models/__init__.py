"""Flax linen networks of the paper: improved AlexNet, audio CNN, LSTM, multimodal attention."""
