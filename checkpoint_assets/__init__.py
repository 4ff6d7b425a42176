"""checkpoint_assets: move LangGraph checkpoints from SqliteSaver to PostgresSaver, losslessly and provably."""

__version__ = "0.1.0"
