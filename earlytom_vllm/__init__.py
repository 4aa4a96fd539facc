"""EarlyTom for vLLM: visual-token compression inside the vision encoder.

Importing this package is cheap: it pulls in the configuration only.
"""

from earlytom_vllm.config import EarlyTomConfig

__version__ = "0.1.0"

__all__ = ["EarlyTomConfig", "__version__"]
