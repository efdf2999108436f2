"""Self-MM: self-supervised multi-task learning for multimodal sentiment analysis."""

__version__ = "0.1.0"
