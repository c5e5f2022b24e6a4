"""A practitioner's own text classifier for ``giabench audit`` tests: a 2-block GPT-2-like decoder for sequences of 12
tokens of the austen vocabulary (4,096 words), built from giabench's transformer blocks."""

from giabench.text_models import Gpt2


def make_model():
    return Gpt2((12, 4096), 6, width=768, heads=12, layers=2)
