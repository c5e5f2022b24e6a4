"""giabench: a benchmark for gradient inversion attacks and defenses in federated learning."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("giabench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"
