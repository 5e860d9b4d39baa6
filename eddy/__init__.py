"""eddy: a node-shared, tiered dataset cache for Kubernetes, delivered as one CSI driver."""

from importlib import metadata

try:
    __version__ = metadata.version("eddy-csi")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
